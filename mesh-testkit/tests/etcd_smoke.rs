//! Smoke test: a real etcd takes a put and answers a get, also after a restart.

use etcd_client::Client;
use mesh_testkit::{etcd_or_skip, EtcdProcess};
use std::time::Duration;
use tokio::time::timeout;

const STEP: Duration = Duration::from_secs(15);

async fn get(etcd: &EtcdProcess, key: &str) -> anyhow::Result<Option<String>> {
    let mut client = timeout(STEP, Client::connect([etcd.endpoint()], None)).await??;
    let resp = timeout(STEP, client.get(key, None)).await??;
    Ok(match resp.kvs().first() {
        Some(kv) => Some(kv.value_str()?.to_owned()),
        None => None,
    })
}

#[tokio::test]
async fn etcd_put_get_survives_restart() -> anyhow::Result<()> {
    let _bin = etcd_or_skip!(Ok(()));
    let mut etcd = tokio::task::spawn_blocking(EtcdProcess::start).await??;

    let mut client = timeout(STEP, Client::connect([etcd.client_url()], None)).await??;
    timeout(STEP, client.put("mesh/smoke", "hello", None)).await??;
    assert_eq!(get(&etcd, "mesh/smoke").await?.as_deref(), Some("hello"));
    assert_eq!(get(&etcd, "mesh/absent").await?, None);

    etcd = tokio::task::spawn_blocking(move || etcd.restart().map(|()| etcd)).await??;
    assert_eq!(get(&etcd, "mesh/smoke").await?.as_deref(), Some("hello"));

    etcd.stop();
    assert!(!etcd.is_running());
    Ok(())
}
