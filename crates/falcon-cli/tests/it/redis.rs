#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test
//! Redis as the shared cache and idempotency store, with real `redis-server` processes
//! that the tests kill, restart and pause.

use std::time::{Duration, Instant};

use crate::common::redis::RedisServer;
use crate::common::{Worker, infer, metric};
use serde_json::{Value, json};

fn worker(redis: &RedisServer, id: &str, extra: &[(&str, &str)]) -> Worker {
    let url = redis.url();
    let mut env = vec![("REDIS_URL", url.as_str()), ("WORKER_ID", id), ("CACHE_L1_TTL_SECONDS", "0")];
    env.extend_from_slice(extra);
    Worker::start(&env)
}

#[tokio::test]
async fn two_workers_share_the_cache_and_entries_expire() {
    let redis = RedisServer::start();
    let a = worker(&redis, "w-a", &[("CACHE_TTL_SECONDS", "2")]);
    let b = worker(&redis, "w-b", &[("CACHE_TTL_SECONDS", "2")]);
    let c = reqwest::Client::new();
    let (_, first) = infer(&c, &a, "The food was great", None).await;
    assert_eq!(first["cache_hit"], false);
    // Cache writes happen just after the response (write-behind): wait until it is in Redis.
    let deadline = Instant::now() + Duration::from_secs(2);
    while redis.count_keys("cache:*") == 0 {
        assert!(Instant::now() < deadline, "worker a never wrote its entry to Redis");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (_, second) = infer(&c, &b, "the FOOD was great", None).await;
    assert_eq!(second["cache_hit"], true, "worker b hits what worker a cached");
    assert_eq!(second["worker_id"], "w-b");
    assert_eq!(redis.count_keys("cache:*"), 1);
    let ready: Value = c.get(b.url("/readyz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["checks"]["redis_available"], true);
    assert_eq!(ready["backends"]["cache"], "redis");
    assert_eq!(ready["backends"]["request_log"], "sqlite");
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis.count_keys("cache:*") != 0 {
        assert!(Instant::now() < deadline, "Redis never expired the entry after CACHE_TTL_SECONDS");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, third) = infer(&c, &b, "The food was great", None).await;
    assert_eq!(third["cache_hit"], false);
}

#[tokio::test]
async fn idempotency_keys_replay_across_workers_and_conflict_on_a_new_body() {
    let redis = RedisServer::start();
    let a = worker(&redis, "w-a", &[]);
    let b = worker(&redis, "w-b", &[]);
    let c = reqwest::Client::new();
    let (_, first) = infer(&c, &a, "Loved every minute", Some("order-7")).await;
    assert_eq!(first["idempotency_hit"], false);
    let (status, replay) = infer(&c, &b, "Loved every minute", Some("order-7")).await;
    assert_eq!(status, 200);
    assert_eq!(replay["idempotency_hit"], true);
    assert_eq!(replay["prediction"], first["prediction"]);
    assert_eq!(replay["worker_id"], "w-b");
    assert_eq!(redis.count_keys("idempotency:order-7"), 1);
    let (status, conflict) = infer(&c, &a, "Hated every minute", Some("order-7")).await;
    assert_eq!(status, 409);
    assert_eq!(conflict["error_type"], "idempotency_conflict");
    assert_eq!(metric(&c, &b, "idempotency_hits_total{").await, 1.0);
}

#[tokio::test]
async fn concurrent_duplicates_across_workers_compute_once() {
    let redis = RedisServer::start();
    let a = worker(&redis, "w-a", &[("CACHE_ENABLED", "false")]);
    let b = worker(&redis, "w-b", &[("CACHE_ENABLED", "false")]);
    let c = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (c, url) = (c.clone(), if i % 2 == 0 { a.url("/infer") } else { b.url("/infer") });
        tasks.push(tokio::spawn(async move {
            let r = c
                .post(url)
                .header("x-idempotency-key", "dup-1")
                .json(&json!({"text": "same body"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }));
    }
    let mut computed = 0;
    let mut predictions = std::collections::HashSet::new();
    for t in tasks {
        let body = t.await.unwrap();
        computed += usize::from(body["idempotency_hit"] == false);
        predictions.insert(body["prediction"].as_str().unwrap().to_owned());
    }
    assert_eq!(computed, 1, "exactly one answer was computed, the others replayed it");
    assert_eq!(predictions.len(), 1);
    let misses = metric(&c, &a, "idempotency_misses_total{").await + metric(&c, &b, "idempotency_misses_total{").await;
    assert_eq!(misses, 1.0);
    // The model itself ran once (the cache is off, so every computation is a model job).
    let jobs = metric(&c, &a, "model_inference_batch_size_sum{").await
        + metric(&c, &b, "model_inference_batch_size_sum{").await;
    assert_eq!(jobs, 1.0, "texts the model classified across both workers");
}

#[tokio::test]
async fn redis_outage_serves_uncached_opens_the_breaker_and_recovers() {
    let mut redis = RedisServer::start();
    let w = worker(
        &redis,
        "w-out",
        &[("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "3"), ("CIRCUIT_BREAKER_TIMEOUT_SECONDS", "60")],
    );
    let c = reqwest::Client::new();
    let (_, warm) = infer(&c, &w, "cached before the outage", None).await;
    assert_eq!(warm["cache_hit"], false);

    redis.kill();
    for i in 0..30 {
        let started = Instant::now();
        let (status, body) = infer(&c, &w, &format!("during the outage {i}"), None).await;
        assert_eq!(status, 200, "request {i} failed during the Redis outage: {body}");
        assert_eq!(body["cache_hit"], false);
        assert!(started.elapsed() < Duration::from_secs(2), "request {i} took {:?}", started.elapsed());
    }
    assert_eq!(metric(&c, &w, "circuit_breaker_state{worker_id=\"w-out\",dependency=\"redis\"}").await, 1.0);
    // Open: no more network attempts, so no more failures are counted. Calls already in
    // flight when it opened may still fail for up to one operation timeout (0.5 s): wait
    // until the count holds still for longer than that.
    let series = "circuit_breaker_failures_total{worker_id=\"w-out\",dependency=\"redis\"}";
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut failures = metric(&c, &w, series).await;
    loop {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let now = metric(&c, &w, series).await;
        if now == failures {
            break;
        }
        assert!(Instant::now() < deadline, "Redis failures still being counted 10 s after the breaker opened");
        failures = now;
    }
    for i in 0..10 {
        infer(&c, &w, &format!("still down {i}"), None).await;
    }
    assert_eq!(metric(&c, &w, series).await, failures);
    assert!(
        metric(
            &c,
            &w,
            "fallback_triggered_total{worker_id=\"w-out\",dependency=\"redis\",fallback_type=\"cache_bypass\"}"
        )
        .await
            > 0.0
    );
    let ready = c.get(w.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "Redis down degrades, it does not make the worker unready");
    assert_eq!(ready.json::<Value>().await.unwrap()["checks"]["redis_available"], false);

    // Back: the health probe closes the breaker long before its 60 s open period ends.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        infer(&c, &w, "after recovery", None).await;
        let (_, again) = infer(&c, &w, "after recovery", None).await;
        if again["cache_hit"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "cache hits did not resume within 10 s of Redis coming back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(metric(&c, &w, "circuit_breaker_state{worker_id=\"w-out\",dependency=\"redis\"}").await, 0.0);
    let warnings = w
        .logs
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l["message"].as_str().is_some_and(|m| m.starts_with("Redis unavailable")))
        .count();
    assert!((1..=5).contains(&warnings), "'Redis unavailable' logged {warnings} times: rate-limited, not per request");
    assert!(w.log_messages().iter().any(|m| m == "Circuit breaker opened"));
}

#[tokio::test]
async fn hanging_redis_never_holds_a_request_past_the_operation_timeout() {
    let redis = RedisServer::start();
    let w = worker(
        &redis,
        "w-hang",
        &[("REDIS_OPERATION_TIMEOUT_SECONDS", "0.3"), ("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "1000")],
    );
    let c = reqwest::Client::new();
    infer(&c, &w, "warm up the connection", None).await;
    let cache_errors = |metrics: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with("cache_errors_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    // Each hang lasts 6 s. A request makes at most five Redis calls (cache get, idempotency
    // get, lock, get, set), each cut off at 0.3 s, so it answers within ~1.5 s: far less
    // than a request that waited for Redis would take.
    for pause in ["CLIENT PAUSE 6000 ALL", "DEBUG SLEEP 6"] {
        // The previous hang is over before the next begins.
        let deadline = Instant::now() + Duration::from_secs(15);
        while redis.command_within("PING", Duration::from_millis(200)).as_deref() != Some("+PONG") {
            assert!(Instant::now() < deadline, "Redis still hung before {pause}");
        }
        let before = cache_errors(&c.get(w.url("/metrics")).send().await.unwrap().text().await.unwrap());
        let r = RedisServer::attach(redis.port);
        let cmd = pause.to_owned();
        let hang_started = Instant::now();
        let pauser = std::thread::spawn(move || r.command_within(&cmd, Duration::from_secs(30)));
        // The hang is in effect once a PING from another connection goes unanswered.
        let probe = RedisServer::attach(redis.port);
        let deadline = Instant::now() + Duration::from_secs(3);
        while probe.command_within("PING", Duration::from_millis(200)).is_some() {
            assert!(Instant::now() < deadline, "{pause} did not take effect");
        }
        let requests: Vec<_> = (0..5)
            .map(|i| {
                let (c, url) = (c.clone(), w.url("/infer"));
                let key = format!("{}-{i}", pause.replace(' ', "_"));
                let text = format!("{pause} {i}");
                tokio::spawn(async move {
                    let started = Instant::now();
                    let r = c
                        .post(url)
                        .header("x-idempotency-key", key)
                        .json(&json!({ "text": text }))
                        .timeout(Duration::from_secs(10))
                        .send()
                        .await
                        .unwrap();
                    (r.status().as_u16(), started.elapsed())
                })
            })
            .collect();
        for r in requests {
            let (status, took) = r.await.unwrap();
            assert_eq!(status, 200, "{pause}");
            assert!(took < Duration::from_secs(4), "{pause}: request took {took:?}");
        }
        assert!(hang_started.elapsed() < Duration::from_secs(6), "every request was answered while Redis hung");
        let after = cache_errors(&c.get(w.url("/metrics")).send().await.unwrap().text().await.unwrap());
        assert!(after >= before + 5.0, "{pause}: timeouts were counted in cache_errors_total ({before} -> {after})");
        assert_eq!(pauser.join().unwrap().as_deref(), Some("+OK"), "{pause} was accepted by Redis");
    }
    let timeouts =
        w.logs.lock().unwrap().iter().filter(|l| l["error"].as_str().is_some_and(|e| e.contains("timeout"))).count();
    assert!(timeouts > 0, "the log says why Redis was skipped");
}

#[tokio::test]
async fn worker_starts_and_serves_while_redis_is_down_from_the_start() {
    let mut redis = RedisServer::start();
    redis.kill();
    let w = worker(&redis, "w-nored", &[]);
    let c = reqwest::Client::new();
    let (status, body) = infer(&c, &w, "no redis yet", Some("key-1")).await;
    assert_eq!(status, 200);
    assert_eq!(body["cache_hit"], false);
    let ready = c.get(w.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.json::<Value>().await.unwrap()["checks"]["redis_available"], false);
    // Redis appears later: the worker starts using it without a restart.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis.count_keys("cache:*") == 0 {
        assert!(Instant::now() < deadline, "the worker never started using Redis");
        infer(&c, &w, "redis is here now", None).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A client's key can never reach another key's lock or record.
#[tokio::test]
async fn an_idempotency_key_that_looks_like_a_lock_does_not_clash() {
    let redis = RedisServer::start();
    let w = worker(&redis, "w-clash", &[]);
    let c = reqwest::Client::new();
    let (status, first) = infer(&c, &w, "first body", Some("order:lock")).await;
    assert_eq!((status, &first["idempotency_hit"]), (200, &json!(false)));
    let (status, second) = infer(&c, &w, "second body", Some("order")).await;
    assert_eq!(status, 200, "a different key: not a conflict ({second})");
    assert_eq!(second["idempotency_hit"], false);
    assert_eq!(redis.count_keys("idempotency:*"), 2, "two records, one per key");
    assert_eq!(redis.count_keys("idempotency-lock:*"), 0, "locks are released");
}

/// Redis past `maxmemory` with cache entries evicts them, never an idempotency record: after
/// thousands of evictions every keyed request still replays its first answer. The same run
/// under `allkeys-lru` (the policy this deployment used before) loses records, so the test
/// can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_evicts_cache_entries_and_never_an_idempotency_record() {
    const KEYED: usize = 200;
    for (policy, keeps_every_record) in [("volatile-lru", true), ("allkeys-lru", false)] {
        let redis = RedisServer::start();
        assert_eq!(redis.command(&format!("CONFIG SET maxmemory-policy {policy}")).as_deref(), Some("+OK"));
        let w = worker(&redis, "w-full", &[]);
        let c = reqwest::Client::new();
        for i in 0..KEYED {
            let (status, body) =
                infer(&c, &w, &format!("order {i} arrived on time"), Some(&format!("order-{i}"))).await;
            assert_eq!((status, &body["idempotency_hit"]), (200, &json!(false)));
        }
        // Bound memory a little above what it holds now, then fill it with cache entries.
        let bound = redis.info("used_memory") + (1 << 20);
        assert_eq!(redis.command(&format!("CONFIG SET maxmemory {bound}")).as_deref(), Some("+OK"));
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut n = 0;
        while redis.info("evicted_keys") < 2_000 {
            assert!(Instant::now() < deadline, "{policy}: Redis did not evict 2,000 keys ({n} texts sent)");
            let batch: Vec<_> = (0..16)
                .map(|j| {
                    let (c, url) = (c.clone(), w.url("/infer"));
                    let text = format!("unique text number {} for the cache", n + j);
                    async move { c.post(url).json(&json!({ "text": text })).send().await.unwrap().status() }
                })
                .collect();
            for status in futures_util::future::join_all(batch).await {
                assert_eq!(status, 200);
            }
            n += 16;
        }
        let mut replayed = 0;
        for i in 0..KEYED {
            let (status, body) =
                infer(&c, &w, &format!("order {i} arrived on time"), Some(&format!("order-{i}"))).await;
            assert_eq!(status, 200);
            // A replay, not the model run again because the record was gone.
            if body["idempotency_hit"] == true {
                replayed += 1;
            }
        }
        if keeps_every_record {
            assert_eq!(
                replayed,
                KEYED,
                "{policy}: every record replays after {} evictions",
                redis.info("evicted_keys")
            );
            assert_eq!(redis.count_keys("idempotency:*"), KEYED);
            assert!(redis.count_keys("cache:*") > 0, "the cache still works, within the bound");
            let metrics = c.get(w.url("/metrics")).send().await.unwrap().text().await.unwrap();
            let bypassed: Vec<&str> =
                metrics.lines().filter(|l| l.contains("idempotency_bypass") && !l.ends_with(" 0")).collect();
            assert!(bypassed.is_empty(), "idempotency was never bypassed: {bypassed:?}");
        } else {
            assert!(replayed < KEYED, "{policy}: expected lost records, all {KEYED} replayed");
        }
    }
}

/// Idempotency records carry no Redis TTL; the workers delete them when they are due.
#[tokio::test]
async fn idempotency_records_have_no_redis_ttl_and_the_workers_delete_them_when_due() {
    let redis = RedisServer::start();
    let w = worker(&redis, "w-ttl", &[("IDEMPOTENCY_TTL_SECONDS", "1")]);
    let c = reqwest::Client::new();
    let (_, first) = infer(&c, &w, "Loved every minute", Some("order-ttl")).await;
    assert_eq!(first["idempotency_hit"], false);
    assert_eq!(redis.command("TTL idempotency:order-ttl").as_deref(), Some(":-1"), "no TTL: never evicted");
    assert_eq!(redis.command("ZCARD idempotency-expiry").as_deref(), Some(":1"));
    let deadline = Instant::now() + Duration::from_secs(15);
    while redis.count_keys("idempotency:*") != 0 {
        assert!(Instant::now() < deadline, "the record was not deleted after its TTL");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(redis.command("ZCARD idempotency-expiry").as_deref(), Some(":0"));
    let (_, again) = infer(&c, &w, "Loved every minute", Some("order-ttl")).await;
    assert_eq!(again["idempotency_hit"], false, "an expired key computes afresh");
}
