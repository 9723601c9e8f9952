-- wrk script (wrk -s): once the run is done, prints its whole latency histogram on one line,
-- "hist VALUE:COUNT ...", VALUE in microseconds, so that runs can be pooled: the p99 of all
-- the requests of several runs is not the median of their p99s.
done = function(summary, latency, requests)
  local out = {}
  local i = 1
  while true do
    -- latency(i) is the i-th distinct value and how many requests took it; 0 past the last.
    local value, count = latency(i)
    if value == 0 then break end
    out[#out + 1] = string.format("%d:%d", value, count)
    i = i + 1
  end
  io.write("hist " .. table.concat(out, " ") .. "\n")
end
