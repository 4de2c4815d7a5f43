#!/bin/sh
# Starts one Redis of the StatefulSet as a replica of the current primary: the one the sentinels name,
# else a peer that says it is the primary, else (the very first start) redis-0, which then starts as
# the primary itself.
set -eu
self="$(hostname).redis"
master=""
for i in 0 1 2; do
  master="$(redis-cli -h "redis-sentinel-$i.redis-sentinel" -p 26379 --raw \
    sentinel get-master-addr-by-name antiphon 2>/dev/null | head -n 1)" || master=""
  [ -n "$master" ] && break
done
if [ -z "$master" ]; then
  for i in 0 1 2; do
    peer="redis-$i.redis"
    [ "$peer" = "$self" ] && continue
    if redis-cli -h "$peer" -p 6379 info replication 2>/dev/null | grep -q '^role:master'; then
      master="$peer"
      break
    fi
  done
fi
[ -n "$master" ] || master="redis-0.redis"
cp /etc/redis/redis.conf /run/redis/redis.conf
{
  echo "replica-announce-ip $self"
  [ "$master" = "$self" ] || echo "replicaof $master 6379"
} >>/run/redis/redis.conf
exec redis-server /run/redis/redis.conf
