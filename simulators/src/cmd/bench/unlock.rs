//! `bench unlock`: the remote unlock round trip (an API call waiting for the `opened`
//! outcome) with N real agents connected, optionally with the fleet's normal traffic; against
//! one gateway on sled or a cluster's nodes (the calls round robin over them).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use locker_sim::bench::cpu::{CpuSpan, ProcessesCpu};
use locker_sim::bench::Percentiles;
use locker_sim::fleet::{self, FleetOptions, GatewayMode};
use rand::Rng as _;
use tokio::sync::Semaphore;

use super::{agent_options, gateway_bin, metrics_each, secs, wait_for, Common, TOKEN};

/// What `bench unlock` runs.
pub(super) struct UnlockRun {
    /// Agents.
    pub(super) n: usize,
    pub(super) unlocks: usize,
    pub(super) concurrency: usize,
    pub(super) activity: f64,
    pub(super) cluster_nodes: usize,
}

pub(super) async fn unlock(c: &Common, run: &UnlockRun) -> anyhow::Result<()> {
    let &UnlockRun {
        n,
        unlocks,
        concurrency,
        activity,
        cluster_nodes,
    } = run;
    let pki = c.state.join("pki");
    let name = "unlock";
    let _ = std::fs::remove_dir_all(c.state.join(name));
    let opts = FleetOptions {
        activity_per_min: activity,
        ..agent_options(c, n, name)
    };
    // Cluster mode: three NATS servers and the nodes (node 1 the domain node), the agents
    // spread over their edges round robin; the fleet's own API calls go to node 1.
    let mode = if cluster_nodes > 0 {
        GatewayMode::Cluster {
            bin: gateway_bin(c),
            nodes: cluster_nodes,
        }
    } else {
        GatewayMode::Child {
            bin: gateway_bin(c),
        }
    };
    let l = fleet::launch(opts, &pki, mode, TOKEN).await?;
    let cluster = l.gateway.is_cluster();
    // every node's API (the one gateway's alone on sled); the unlocks go to them round robin
    let apis = l.gateway.apis();
    let nodes = apis.len();
    l.fleet.ramp_up().await?;
    let up = wait_for(Duration::from_secs(300), || {
        l.fleet.snapshot().connected == n
    })
    .await;
    println!("{n} agents connected: {}", secs(up));
    let _ = wait_for(Duration::from_secs(60), || l.fleet.snapshot().outbox == 0).await;
    if cluster {
        // every node sees the whole fleet online, wherever each agent is connected
        let here = l
            .gateway
            .metric_each(&apis, "locker_cluster_cabinets_here")
            .await;
        println!("  cabinets held per node (presence bucket): {here:?}");
    }
    let hist = Arc::new(std::sync::Mutex::new(
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?,
    ));
    let outcomes = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<
        String,
        u64,
    >::new()));
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let locks = usize::from(l.fleet.opts.locks);
    let mut tasks = tokio::task::JoinSet::new();
    // the fleet's normal traffic, if asked: scenarios started every 100 ms, as in `fleet`
    let traffic = async {
        let (mut carry, mut last) = (0.0, Instant::now());
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = Instant::now();
            l.fleet.tick(now - last, &mut carry);
            last = now;
        }
    };
    tokio::pin!(traffic);
    if activity > 0.0 {
        // a few seconds of traffic before measuring
        let _ = tokio::time::timeout(Duration::from_secs(3), &mut traffic).await;
        println!("fleet traffic: {activity} scenarios per cabinet per minute");
    }
    let flushes = |text: &str, store: &str| {
        locker_sim::fleet::api::metric_with(
            text,
            "locker_store_flushes_total",
            &format!("store=\"{store}\""),
        )
    };
    let m0 = metrics_each(&apis).await;
    let cpu = CpuSpan::start(l.gateway.pid());
    let cluster_cpu = cluster.then(|| {
        (
            ProcessesCpu::start(&l.gateway.gateway_pids()),
            ProcessesCpu::start(&l.gateway.nats_pids()),
        )
    });
    let crossing = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    let mut order: Vec<usize> = (0..unlocks).collect();
    {
        let mut rng = rand::thread_rng();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.gen_range(0..=i));
        }
    }
    // the unlocks, issued and awaited while the traffic (if any) keeps running
    let work = async {
        for (j, k) in order.into_iter().enumerate() {
            // the API node round robin; the cabinet is on node (k % n) % nodes
            let at = j % nodes;
            if at != (k % n) % nodes {
                crossing.fetch_add(1, Ordering::Relaxed);
            }
            let (api, hist, outcomes, gate) = (
                apis[at].clone(),
                hist.clone(),
                outcomes.clone(),
                gate.clone(),
            );
            let cab = l.fleet.cabinets[k % n].id.to_string();
            let compartment = u16::try_from((k / n) % locks + 1).unwrap_or(1);
            let Ok(permit) = gate.clone().acquire_owned().await else {
                break;
            };
            tasks.spawn(async move {
                let t = Instant::now();
                let r = api.unlock(&cab, compartment, 60_000, 10_000).await;
                let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
                drop(permit);
                let o = match r {
                    Ok(v) => v["outcome"].as_str().unwrap_or("none").to_owned(),
                    Err(e) => format!("error: {e}"),
                };
                if o == "opened" {
                    let _ = hist.lock().map(|mut h| h.record(us.max(1))).map_err(|_| ());
                }
                if let Ok(mut m) = outcomes.lock() {
                    *m.entry(o).or_default() += 1;
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    };
    if activity > 0.0 {
        tokio::select! {
            _ = work => {}
            _ = &mut traffic => {}
        }
    } else {
        work.await;
    }
    let elapsed = start.elapsed();
    let m1 = metrics_each(&apis).await;
    let cpu = cpu.stop(l.gateway.pid());
    let cluster_cpu = cluster_cpu.map(|(g, nats)| {
        format!(
            "{}; {}",
            g.line(&format!("{nodes} gateway nodes")),
            nats.line("NATS servers")
        )
    });
    let p = hist.lock().map(|h| Percentiles::of(&h)).unwrap_or_default();
    let mode = if cluster {
        format!(
            "{nodes} cluster nodes, {} of the calls to a node other than the cabinet's",
            crossing.load(Ordering::Relaxed)
        )
    } else {
        "one node on sled".into()
    };
    println!(
        "remote unlock with {n} agents connected ({mode}), {unlocks} unlocks, {concurrency} in flight, in {:.1} s: opened round trip {p}",
        elapsed.as_secs_f64()
    );
    println!(
        "  outcomes: {:?}",
        outcomes.lock().map(|m| m.clone()).unwrap_or_default()
    );
    let per = |store: &str| {
        let d: f64 = m0
            .iter()
            .zip(&m1)
            .map(|(a, b)| flushes(b, store) - flushes(a, store))
            .sum();
        d / unlocks.max(1) as f64
    };
    println!(
        "  gateway flushes per unlock (all nodes): commands {:.2}, audit {:.2} (shared with all other traffic)",
        per("commands"),
        per("audit")
    );
    if cluster {
        let delta = |name: &str, label: &str| -> Vec<f64> {
            m0.iter()
                .zip(&m1)
                .map(|(a, b)| {
                    locker_sim::fleet::api::metric_with(b, name, label)
                        - locker_sim::fleet::api::metric_with(a, name, label)
                })
                .collect()
        };
        println!(
            "  per node: commands created {:?}, opened {:?}, downlinks forwarded {:?}, received {:?}, uplinks fed from the stream {:?}",
            delta("locker_commands_created_total", ""),
            delta("locker_commands_outcomes_total", "outcome=\"opened\""),
            delta("locker_cluster_downlinks_total", "result=\"forwarded\""),
            delta("locker_cluster_downlinks_total", "result=\"received\""),
            delta("locker_cluster_feed_total", ""),
        );
    }
    println!("  unlock phase {cpu}");
    if let Some(line) = cluster_cpu {
        println!("  unlock phase CPU: {line}");
    }
    // every event the agents made (results, door events) acknowledged
    let drained = wait_for(Duration::from_secs(60), || l.fleet.snapshot().outbox == 0).await;
    println!(
        "  agents' outboxes drained (all acknowledged): {}",
        secs(drained)
    );
    // (an external runner has no pid: rss_kib(None) would be this process's own)
    for (i, node) in l.gateway.nodes().enumerate() {
        let Some(r) = node.pid().and_then(|p| fleet::rss_kib(Some(p))) else {
            continue;
        };
        if cluster {
            println!("  node {} RSS after the unlocks: {r} KiB", i + 1);
        } else {
            println!(
                "  gateway RSS after the unlocks: {r} KiB = {:.1} KiB per connected cabinet",
                r as f64 / n as f64
            );
        }
    }
    l.fleet.shutdown().await;
    l.gateway.stop().await;
    Ok(())
}
