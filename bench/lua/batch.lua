-- POST /api/v1/usage/batch/: N events per request (default 1000), each with a unique idempotency key;
-- counts the events answered 201 inside each 200 answer.
package.path = debug.getinfo(1, "S").source:match("@?(.*/)") .. "?.lua;" .. package.path
local common = require("common")

local threads = {}
local counter = 0

function setup(thread)
   thread:set("tid", #threads + 1)
   threads[#threads + 1] = thread
end

function init(args)
   run_id, service = args[1], args[2]
   keys = common.read_keys(args[3])
   per_request = tonumber(args[4] or "1000")
   offset = (tid * 7919) % #keys
   statuses = {}
   ok_events, bad_events = 0, 0
   head = '{"service":"' .. service .. '","idempotency_key":"' .. run_id .. "-" .. tid .. "-"
end

function request()
   counter = counter + 1
   local key = keys[(counter + offset) % #keys + 1]
   local events = {}
   local base = counter * per_request
   for i = 1, per_request do
      events[i] = head .. (base + i) .. '"}'
   end
   return wrk.format("POST", "/api/v1/usage/batch/", {
      ["Authorization"] = "Bearer " .. key,
      ["Content-Type"] = "application/json",
      ["X-Forwarded-Proto"] = "https",
   }, '{"events":[' .. table.concat(events, ",") .. "]}")
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
   if status == 200 then
      local _, created = string.gsub(body, '"status":201', "")
      ok_events = ok_events + created
      bad_events = bad_events + per_request - created
   else
      bad_events = bad_events + per_request
   end
end

function done(summary, latency, requests)
   common.report(threads, summary, latency)
end
