//! Kubernetes side of the test bed: an admin client for the sandbox's real kube-apiserver,
//! and a namespace per test.

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use rand::Rng;

use crate::Sandbox;

/// An admin client (group `system:masters`) for the sandbox's apiserver.
pub async fn client() -> Client {
    client_for(Sandbox::get()).await
}

pub async fn client_for(sandbox: &Sandbox) -> Client {
    let kubeconfig = Kubeconfig::read_from(&sandbox.kube.kubeconfig)
        .unwrap_or_else(|e| panic!("reading {}: {e}", sandbox.kube.kubeconfig.display()));
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("sandbox kubeconfig is usable");
    Client::try_from(config).expect("kube client from sandbox kubeconfig")
}

/// A namespace that belongs to one test. Its name is the prefix plus a random suffix, so
/// tests never share state. Call [`TestNamespace::cleanup`] at the end of a test; a test
/// that fails leaves its namespace behind for inspection (the sandbox is torn down whole).
pub struct TestNamespace {
    client: Client,
    name: String,
}

impl TestNamespace {
    pub async fn new(client: &Client, prefix: &str) -> TestNamespace {
        let suffix: u32 = rand::rng().random_range(0..0xffffff);
        let name = format!("{prefix}-{suffix:06x}");
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {"pgml.io/test": prefix}},
        }))
        .expect("namespace object");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating test namespace {name}: {e}"));
        TestNamespace {
            client: client.clone(),
            name,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A namespaced API in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Deletes the namespace (the namespace controller removes what is in it).
    pub async fn cleanup(self) {
        let _ = Api::<Namespace>::all(self.client.clone())
            .delete(&self.name, &DeleteParams::background())
            .await;
    }
}
