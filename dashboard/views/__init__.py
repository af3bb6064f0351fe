"""The customer dashboard's views, one module per page group. Views parse input, call one service
or selector, and render; they never write to the ORM themselves."""
