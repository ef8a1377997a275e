//! The conformance suite every [`Kv`] passes: the in-memory one in this
//! crate's tests, etcd in the cluster tests (`tests/tests/adapters.rs`).

use crate::{Kv, KvEvent};

/// Runs every check against `kv`; `prefix` keeps runs against a shared
/// server apart.
pub async fn run(kv: &dyn Kv, prefix: &str) {
    use futures::StreamExt;
    let k = |s: &str| format!("{prefix}/{s}");
    assert_eq!(kv.get(&k("a")).await.expect("get"), None);
    kv.put(&k("a"), b"1".to_vec()).await.expect("put");
    kv.put_all(vec![(k("b"), b"2".to_vec()), (k("c/d"), b"3".to_vec())]).await.expect("put_all");
    assert_eq!(kv.get(&k("a")).await.expect("get"), Some(b"1".to_vec()));
    let listed = kv.list(&format!("{prefix}/")).await.expect("list");
    assert_eq!(listed, vec![(k("a"), b"1".to_vec()), (k("b"), b"2".to_vec()), (k("c/d"), b"3".to_vec())]);
    let mut watch = kv.watch(&format!("{prefix}/c/")).await.expect("watch");
    assert_eq!(
        watch.next().await.expect("snapshot").expect("event"),
        KvEvent::Put { key: k("c/d"), value: b"3".to_vec() }
    );
    kv.put(&k("c/e"), b"4".to_vec()).await.expect("put");
    kv.put(&k("other"), b"5".to_vec()).await.expect("put");
    kv.delete(&k("c/d")).await.expect("delete");
    assert_eq!(
        watch.next().await.expect("event").expect("event"),
        KvEvent::Put { key: k("c/e"), value: b"4".to_vec() }
    );
    assert_eq!(watch.next().await.expect("event").expect("event"), KvEvent::Delete { key: k("c/d") });
    assert_eq!(kv.get(&k("c/d")).await.expect("get"), None);
}
