-- POST one JSON body (an OpenAI chat completion) to the given path: the fake upstream directly, or the gateway.
-- Arguments after `--`: path, file of bearer keys (one a line), file holding the JSON body.
-- Counts 200 answers as ok_events, anything else as bad_events.
package.path = debug.getinfo(1, "S").source:match("@?(.*/)") .. "?.lua;" .. package.path
local common = require("common")

local threads = {}
local counter = 0

function setup(thread)
   thread:set("tid", #threads + 1)
   threads[#threads + 1] = thread
end

function init(args)
   path = args[1]
   keys = common.read_keys(args[2])
   local file = assert(io.open(args[3], "r"))
   body = file:read("*a")
   file:close()
   offset = (tid * 7919) % #keys
   statuses = {}
   ok_events, bad_events = 0, 0
end

function request()
   counter = counter + 1
   local key = keys[(counter + offset) % #keys + 1]
   return wrk.format("POST", path, {
      ["Authorization"] = "Bearer " .. key,
      ["Content-Type"] = "application/json",
   }, body)
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
   if status == 200 then ok_events = ok_events + 1 else bad_events = bad_events + 1 end
end

function done(summary, latency, requests)
   common.report(threads, summary, latency)
end
