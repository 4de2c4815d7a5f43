#!/bin/sh
# Starts one sentinel monitoring the current primary: the one its peers name, else the Redis pod that
# says it is the primary, else (the very first start) redis-0. Names, not pod IPs, are announced and
# monitored: a rescheduled pod comes back with a new IP.
set -eu
self="$(hostname).redis-sentinel"
master=""
for i in 0 1 2; do
  peer="redis-sentinel-$i.redis-sentinel"
  [ "$peer" = "$self" ] && continue
  master="$(redis-cli -h "$peer" -p 26379 --raw \
    sentinel get-master-addr-by-name antiphon 2>/dev/null | head -n 1)" || master=""
  [ -n "$master" ] && break
done
if [ -z "$master" ]; then
  for i in 0 1 2; do
    if redis-cli -h "redis-$i.redis" -p 6379 info replication 2>/dev/null | grep -q '^role:master'; then
      master="redis-$i.redis"
      break
    fi
  done
fi
[ -n "$master" ] || master="redis-0.redis"
cat >/run/sentinel/sentinel.conf <<CONF
port 26379
dir /run/sentinel
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip $self
sentinel monitor antiphon $master 6379 2
sentinel down-after-milliseconds antiphon 5000
sentinel failover-timeout antiphon 30000
sentinel parallel-syncs antiphon 1
CONF
exec redis-sentinel /run/sentinel/sentinel.conf
