-- wrk script: POST real multipart image uploads, cycling through pre-built bodies, and print one JSON line.
--   wrk -t1 -c64 -d5s -s bench/upload.lua http://127.0.0.1:8000/predict -- MANIFEST CONTENT_TYPE
-- MANIFEST lists one file per line, each a complete multipart/form-data body (see bench/workloads.py).

local requests = {}
local next_index = 0

function init(args)
  local manifest, content_type = args[1], args[2]
  for path in io.lines(manifest) do
    local file = assert(io.open(path, "rb"))
    local body = file:read("*a")
    file:close()
    requests[#requests + 1] = wrk.format("POST", nil, { ["Content-Type"] = content_type }, body)
  end
  assert(#requests > 0, "no request bodies in " .. manifest)
end

function request()
  next_index = next_index % #requests + 1
  return requests[next_index]
end

function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d, '
      .. '"p50_us": %d, "p95_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max, latency.mean
  ))
end
