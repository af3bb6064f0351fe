"""`make bench`: the debit path measured end to end (raw SQL, POST usage/, POST usage/batch/)."""
