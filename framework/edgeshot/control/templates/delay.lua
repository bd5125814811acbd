-- Simulated round-trip time between a user's region and the edgepoint that served it
-- (local networks only: no sch_netem here). The controller's delay map gives the
-- milliseconds per region@edgepoint; the sleep yields, it blocks nothing.
core.register_action("edgeshot_delay", { "http-res" }, function(txn)
    local ms = tonumber(txn:get_var("txn.delay_ms"))
    if ms and ms > 0 then
        core.msleep(math.floor(ms))
    end
end, 0)
