-- Shared by usage.lua and batch.lua (wrk runs each thread in its own Lua state).
-- Arguments after `--`: run id, service slug, file of API key secrets (one a line), [events per batch].

local M = {}

function M.read_keys(path)
   local keys = {}
   for line in io.lines(path) do
      if #line > 0 then keys[#keys + 1] = line end
   end
   assert(#keys > 0, "no API keys in " .. path)
   return keys
end

-- One JSON line the bench parses; latencies in microseconds.
function M.report(threads, summary, latency)
   local statuses, ok_events, bad_events = {}, 0, 0
   for _, t in ipairs(threads) do
      local s = t:get("statuses") or {}
      for code, n in pairs(s) do statuses[code] = (statuses[code] or 0) + n end
      ok_events = ok_events + (t:get("ok_events") or 0)
      bad_events = bad_events + (t:get("bad_events") or 0)
   end
   local parts = {}
   for code, n in pairs(statuses) do parts[#parts + 1] = string.format('"%s":%d', tostring(code), n) end
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"p50":%.1f,"p90":%.1f,"p99":%.1f,"max":%.1f,"mean":%.1f},' ..
      '"statuses":{%s},"ok_events":%d,"bad_events":%d}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
      table.concat(parts, ","), ok_events, bad_events))
end

return M
