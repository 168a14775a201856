-- One fixed request.  args: METHOD PATH [BODY [AUTHORIZATION]]
local req

function init(args)
   local headers = {}
   if args[4] ~= nil and args[4] ~= "" then
      headers["Authorization"] = args[4]
   end
   local body = args[3]
   if body ~= nil and body ~= "" then
      headers["Content-Type"] = "application/json"
   else
      body = nil
   end
   req = wrk.format(args[1], args[2], headers, body)
end

function request()
   return req
end
