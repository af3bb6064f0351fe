-- POST /api/v1/usage/ (or the path given after the keys file: the bench's ceiling view): one event per request, a unique idempotency key each (run id, thread, counter),
-- API keys taken round-robin from a file (one key: the hot wallet; many: spread wallets).
package.path = debug.getinfo(1, "S").source:match("@?(.*/)") .. "?.lua;" .. package.path
local common = require("common")

local threads = {}
local counter = 0

function setup(thread)
   thread:set("tid", #threads + 1)
   threads[#threads + 1] = thread
end

function init(args)
   run_id, service, path = args[1], args[2], args[4] or "/api/v1/usage/"
   keys = common.read_keys(args[3])
   offset = (tid * 7919) % #keys
   statuses = {}
   ok_events, bad_events = 0, 0
   prefix = '{"service":"' .. service .. '","idempotency_key":"' .. run_id .. "-" .. tid .. "-"
end

function request()
   counter = counter + 1
   local key = keys[(counter + offset) % #keys + 1]
   return wrk.format("POST", path, {
      ["Authorization"] = "Bearer " .. key,
      ["Content-Type"] = "application/json",
      ["X-Forwarded-Proto"] = "https",
   }, prefix .. counter .. '"}')
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
   if status == 201 then ok_events = ok_events + 1 else bad_events = bad_events + 1 end
end

function done(summary, latency, requests)
   common.report(threads, summary, latency)
end
