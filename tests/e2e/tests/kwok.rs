//! kwok in the sandbox plays the kubelet of the simulated nodes: they stay Ready (a Lease
//! renewed every ~10 s), a Pod bound to one (spec.nodeName, as the operator binds its
//! instances' Pods; there is no kube-scheduler) becomes Running and Ready with a pod IP, a
//! deleted Pod goes away, and kube-controller-manager puts a Ready Pod's IP in its Service's
//! EndpointSlice. kwok changes nothing the sandbox set on the nodes (providerID, labels) and
//! leaves nodes without the `kwok.x-k8s.io/node: fake` annotation alone.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use pgml_testbed::Sandbox;
use pgml_testbed::kube::{TestNamespace, client};
use pgml_testbed::wait::{has_condition, wait_for, wait_gone};

const TIMEOUT: Duration = Duration::from_secs(30);

/// What the sandbox derives a node's InternalIP from: ip-10-0-1-10.ec2.internal -> 10.0.1.10.
fn node_ip(name: &str) -> String {
    name.split('.')
        .next()
        .unwrap()
        .trim_start_matches("ip-")
        .replace('-', ".")
}

fn pod(name: &str, node: &str, labels: serde_json::Value, init: bool) -> Pod {
    let mut spec = json!({
        "nodeName": node,
        "containers": [{"name": "postgres", "image": "ghcr.io/postgresml/postgresml:2.10.0",
                        "ports": [{"containerPort": 5432, "name": "postgres"}]}],
    });
    if init {
        spec["initContainers"] = json!([
            {"name": "copy-manager", "image": "busybox:1.36", "command": ["true"]},
        ]);
    }
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
    }))
    .unwrap()
}

fn running_and_ready(p: &Pod) -> bool {
    let s = p.status.as_ref();
    s.and_then(|s| s.phase.as_deref()) == Some("Running")
        && has_condition(p, "Ready", "True")
        && s.and_then(|s| s.pod_ip.as_deref())
            .is_some_and(|ip| !ip.is_empty())
}

async fn create_pod(api: &Api<Pod>, p: &Pod) -> Pod {
    api.create(&PostParams::default(), p)
        .await
        .unwrap_or_else(|e| panic!("creating pod {:?}: {e}", p.metadata.name))
}

/// Creates the Pod and waits until kwok has it Running and Ready.
async fn run_pod(api: &Api<Pod>, p: &Pod) -> Pod {
    create_pod(api, p).await;
    let name = p.metadata.name.as_deref().expect("pod name");
    wait_for(api, name, "Running and Ready", TIMEOUT, running_and_ready).await
}

/// Every sandbox node is Ready, with the providerID, zone and labels the sandbox gave it,
/// the InternalIP of its name, no taint, and a node Lease that kwok keeps renewing.
#[tokio::test]
async fn sandbox_nodes_are_ready_and_keep_what_the_sandbox_set() {
    let sb = Sandbox::get();
    let client = client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    assert!(!sb.nodes.is_empty());
    for info in &sb.nodes {
        let n = wait_for(&nodes, &info.name, "Ready", TIMEOUT, |n: &Node| {
            has_condition(n, "Ready", "True")
        })
        .await;
        let spec = n.spec.clone().unwrap_or_default();
        assert_eq!(
            spec.provider_id.as_deref(),
            Some(format!("aws:///{}/{}", info.az, info.instance_id).as_str()),
            "{}: providerID",
            info.name
        );
        let taints = spec.taints.unwrap_or_default();
        assert!(taints.is_empty(), "{}: taints {taints:?}", info.name);
        let labels = n.metadata.labels.clone().unwrap_or_default();
        let label = |k: &str| labels.get(k).map(String::as_str);
        assert_eq!(label("topology.kubernetes.io/zone"), Some(info.az.as_str()));
        assert_eq!(
            label("topology.kubernetes.io/region"),
            Some(sb.region.as_str())
        );
        assert_eq!(label("kubernetes.io/hostname"), Some(info.name.as_str()));
        assert_eq!(
            label("node.kubernetes.io/instance-type"),
            Some("m7i.xlarge")
        );
        let annotations = n.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(
            annotations.get("kwok.x-k8s.io/node").map(String::as_str),
            Some("fake")
        );
        let addresses = n.status.as_ref().unwrap().addresses.clone().unwrap();
        assert!(
            addresses
                .iter()
                .any(|a| a.type_ == "InternalIP" && a.address == node_ip(&info.name)),
            "{}: addresses {addresses:?}",
            info.name
        );
    }

    // The heartbeat: each node's Lease is renewed (every ~10 s; it lasts 40 s).
    let renew_time = |l: &Lease| l.spec.as_ref().and_then(|s| s.renew_time.clone());
    let mut before = Vec::new();
    for info in &sb.nodes {
        let l = leases
            .get(&info.name)
            .await
            .unwrap_or_else(|e| panic!("lease of {}: {e}", info.name));
        assert_eq!(
            l.spec.as_ref().unwrap().lease_duration_seconds,
            Some(40),
            "{}",
            info.name
        );
        before.push(renew_time(&l).expect("renewTime"));
    }
    for (info, t0) in sb.nodes.iter().zip(before) {
        wait_for(
            &leases,
            &info.name,
            "lease renewed",
            Duration::from_secs(40),
            |l| renew_time(l).is_some_and(|t| t.0 > t0.0),
        )
        .await;
    }
}

/// A Pod bound to a sandbox node, with an init container, becomes Running and Ready with a
/// pod IP and the node's InternalIP as host IP, its init container Completed; deleted, it
/// goes away (kwok plays the kubelet's part of a graceful deletion).
#[tokio::test]
async fn a_pod_bound_to_a_node_runs_and_goes_when_deleted() {
    let sb = Sandbox::get();
    let client = client().await;
    let ns = TestNamespace::new(&client, "kwok-pod").await;
    let pods: Api<Pod> = ns.api();
    let node = &sb.nodes[1 % sb.nodes.len()];

    let p = run_pod(
        &pods,
        &pod("instance-1", &node.name, json!({"app": "x"}), true),
    )
    .await;
    let uid = p.metadata.uid.clone().unwrap();
    let s = p.status.as_ref().unwrap();
    assert!(has_condition(&p, "Initialized", "True"), "{s:?}");
    assert!(has_condition(&p, "ContainersReady", "True"), "{s:?}");
    assert_eq!(s.host_ip.as_deref(), Some(node_ip(&node.name).as_str()));
    let ip: std::net::Ipv4Addr = s.pod_ip.as_deref().unwrap().parse().unwrap();
    assert_eq!(
        ip.octets()[..2],
        [10, 244],
        "pod IP {ip} outside 10.244.0.0/16"
    );
    let init = s.init_container_statuses.as_ref().unwrap();
    assert_eq!(init.len(), 1);
    let done = init[0].state.as_ref().unwrap().terminated.as_ref();
    assert!(
        done.is_some_and(|t| t.exit_code == 0 && t.reason.as_deref() == Some("Completed")),
        "{init:?}"
    );
    let containers = s.container_statuses.as_ref().unwrap();
    assert!(
        containers.len() == 1
            && containers[0].ready
            && containers[0].state.as_ref().unwrap().running.is_some(),
        "{containers:?}"
    );

    // A second Pod on the same node gets another IP.
    let p2 = run_pod(
        &pods,
        &pod("instance-2", &node.name, json!({"app": "y"}), false),
    )
    .await;
    assert_ne!(p2.status.unwrap().pod_ip.unwrap(), ip.to_string());

    // Deleted with the default grace period: gone well before it would have run out.
    let start = Instant::now();
    pods.delete("instance-1", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&pods, "instance-1", TIMEOUT).await;
    assert!(
        start.elapsed() < Duration::from_secs(25),
        "{:?}",
        start.elapsed()
    );
    // ... and the same name can be used again at once, as the operator will on a restart.
    let again = run_pod(
        &pods,
        &pod("instance-1", &node.name, json!({"app": "x"}), true),
    )
    .await;
    assert_ne!(again.metadata.uid.unwrap(), uid);
    ns.cleanup().await;
}

/// kube-controller-manager's EndpointSlice controller lists a Ready Pod's IP, node and zone
/// in the slice of the Service that selects it, and drops it when the Pod is deleted.
#[tokio::test]
async fn a_service_gets_the_pod_ip_in_its_endpointslice() {
    let sb = Sandbox::get();
    let client = client().await;
    let ns = TestNamespace::new(&client, "kwok-svc").await;
    let pods: Api<Pod> = ns.api();
    let services: Api<Service> = ns.api();
    let slices: Api<EndpointSlice> = ns.api();
    let node = &sb.nodes[2 % sb.nodes.len()];

    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "rw"},
        "spec": {"selector": {"pgml.io/role": "primary"},
                 "ports": [{"name": "postgres", "port": 5432, "targetPort": "postgres"}]},
    }))
    .unwrap();
    services.create(&PostParams::default(), &svc).await.unwrap();
    let p = run_pod(
        &pods,
        &pod(
            "primary",
            &node.name,
            json!({"pgml.io/role": "primary"}),
            false,
        ),
    )
    .await;
    let ip = p.status.unwrap().pod_ip.unwrap();

    let endpoints = |slices: Vec<EndpointSlice>| {
        slices
            .into_iter()
            .flat_map(|s| s.endpoints)
            .collect::<Vec<_>>()
    };
    let lp = ListParams::default().labels("kubernetes.io/service-name=rw");
    let start = Instant::now();
    let ep = loop {
        let eps = endpoints(slices.list(&lp).await.unwrap().items);
        if let Some(e) = eps.iter().find(|e| e.addresses.contains(&ip)) {
            break e.clone();
        }
        assert!(
            start.elapsed() < TIMEOUT,
            "no EndpointSlice of Service rw lists {ip}: {eps:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(ep.node_name.as_deref(), Some(node.name.as_str()));
    assert_eq!(ep.zone.as_deref(), Some(node.az.as_str()));
    assert_eq!(ep.conditions.as_ref().and_then(|c| c.ready), Some(true));
    assert_eq!(
        ep.target_ref.as_ref().and_then(|r| r.name.as_deref()),
        Some("primary")
    );

    pods.delete("primary", &DeleteParams::default())
        .await
        .unwrap();
    wait_gone(&pods, "primary", TIMEOUT).await;
    let start = Instant::now();
    loop {
        let eps = endpoints(slices.list(&lp).await.unwrap().items);
        if !eps.iter().any(|e| e.addresses.contains(&ip)) {
            break;
        }
        assert!(
            start.elapsed() < TIMEOUT,
            "{ip} still in Service rw's EndpointSlices: {eps:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    ns.cleanup().await;
}

/// kwok manages only the annotated nodes: a Node without the annotation gets no status and
/// no Lease, and a Pod bound to it stays Pending.
#[tokio::test]
async fn a_node_without_the_annotation_is_left_alone() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "kwok-other").await;
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let name = format!("{}-node", ns.name());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"pgml.io/test": "kwok-other"}},
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let pods: Api<Pod> = ns.api();
    create_pod(&pods, &pod("stray", &name, json!({}), false)).await;

    tokio::time::sleep(Duration::from_secs(5)).await;
    let p = pods.get("stray").await.unwrap();
    assert_eq!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Pending"),
        "{:?}",
        p.status
    );
    assert!(p.status.unwrap().pod_ip.is_none());
    let n = nodes.get(&name).await.unwrap();
    assert!(!has_condition(&n, "Ready", "True"), "{:?}", n.status);
    assert!(leases.get_opt(&name).await.unwrap().is_none());

    // No kubelet to finish a graceful deletion: force it, then remove the node.
    pods.delete("stray", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    wait_gone(&pods, "stray", TIMEOUT).await;
    remove_node(&client, &name).await;
    ns.cleanup().await;
}

async fn remove_node(client: &Client, name: &str) {
    let nodes: Api<Node> = Api::all(client.clone());
    let _ = nodes.delete(name, &DeleteParams::default()).await;
    wait_gone(&nodes, name, TIMEOUT).await;
}
