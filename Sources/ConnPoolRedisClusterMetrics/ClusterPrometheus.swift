public import ConnPoolPrometheus
public import ConnPoolRedisCluster

extension RedisClusterClient {
    /// The whole client in the Prometheus text format (version 0.0.4): every node pool's series as
    /// ``ConnPoolPrometheus/PrometheusExposition`` renders them (label `pool="cluster:<host>:<port>"`, and
    /// `…:readonly` for replica-read pools), followed by the cluster's own counters and gauges
    /// (``ConnPoolRedisCluster/RedisClusterStatus/prometheusText``). Serve it from your `/metrics` handler.
    public func prometheusExposition(buckets: PrometheusExposition.BucketLayout = .octaves) -> String {
        let status = status()
        let pools = status.nodes.flatMap { [$0.pool] + ($0.readOnlyPool.map { [$0] } ?? []) }
        return PrometheusExposition.render(pools, buckets: buckets) + status.prometheusText
    }
}
