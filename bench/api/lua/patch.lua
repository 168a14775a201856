-- PATCH /jobs/{id}/status flipping pre-created jobs queued -> running -> queued ...
-- args: PREFIX PER_THREAD NTHREADS
-- The pool holds PER_THREAD * NTHREADS jobs named PREFIX-<i>, all "queued" at start
-- and used by exactly one wrk invocation.  Thread t owns the jobs i = t + NTHREADS*j
-- and walks them round-robin; round r sends "running" when r is even, "queued" when
-- odd, so every request is a real transition (a write) as long as two requests for
-- the same job are not in flight at once (they are PER_THREAD requests apart).
local prefix, per_thread, nthreads
local n = 0
local headers = { ["Content-Type"] = "application/json" }
local bodies = { [0] = '{"status": "running"}', [1] = '{"status": "queued"}' }

function init(args)
   prefix = args[1]
   per_thread = tonumber(args[2])
   nthreads = tonumber(args[3])
end

function request()
   local j = n % per_thread
   local round = math.floor(n / per_thread)
   n = n + 1
   local i = tid + nthreads * j
   return wrk.format("PATCH", "/jobs/" .. prefix .. "-" .. i .. "/status",
                     headers, bodies[round % 2])
end
