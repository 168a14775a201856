-- POST /jobs with a unique job_id per request.
-- args: PREFIX BODY_TEMPLATE   (BODY_TEMPLATE contains the literal __JOB_ID__ once)
-- job_id = PREFIX .. "-t" .. tid .. "-" .. n   (unique per run, thread and request)
local head, tail, idprefix
local n = 0
local headers = { ["Content-Type"] = "application/json" }

function init(args)
   idprefix = args[1] .. "-t" .. tid .. "-"
   local s, e = string.find(args[2], "__JOB_ID__", 1, true)
   head = string.sub(args[2], 1, s - 1)
   tail = string.sub(args[2], e + 1)
end

function request()
   n = n + 1
   return wrk.format("POST", "/jobs", headers, head .. idprefix .. n .. tail)
end
