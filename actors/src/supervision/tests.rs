use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::*;

/// A child that panics when asked to, and otherwise answers pings.
struct Fragile;

enum FragileMsg {
    Panic,
    Ping(ractor::RpcReplyPort<()>),
}

impl Actor for Fragile {
    type Msg = FragileMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<FragileMsg>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<FragileMsg>,
        msg: FragileMsg,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            FragileMsg::Panic => panic!("injected fault"),
            FragileMsg::Ping(reply) => {
                let _ = reply.send(());
                Ok(())
            }
        }
    }
}

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn root(
    policy: RestartPolicy,
    handle: &ChildHandle<FragileMsg>,
    tree: &ActorTree,
) -> SupervisorArgs {
    SupervisorArgs {
        path: "test".into(),
        children: vec![ChildSpec::new("fragile", handle.clone(), || (Fragile, ()))],
        policy,
        tree: tree.clone(),
        metrics: Metrics::new("test"),
    }
}

#[tokio::test]
async fn a_panicking_child_is_restarted_and_reachable_through_its_handle() {
    let handle = ChildHandle::default();
    let tree = ActorTree::default();
    let policy = RestartPolicy {
        backoff_min: Duration::from_millis(10),
        ..Default::default()
    };
    let (sup, join) = Actor::spawn(None, Supervisor, root(policy, &handle, &tree))
        .await
        .expect("starts");

    let first = handle.get().expect("child running");
    first.cast(FragileMsg::Panic).expect("sent");
    wait_for("restart", || {
        tree.get("test/fragile")
            .is_some_and(|i| i.restarts == 1 && i.state == ActorState::Running)
    })
    .await;

    let second = handle.get().expect("child running again");
    assert_ne!(
        first.get_id(),
        second.get_id(),
        "a new actor replaced the failed one"
    );
    ractor::call_t!(second, FragileMsg::Ping, 1000).expect("the restarted child serves");
    let rendered = tree.render();
    assert_eq!(rendered[0].name, "test");
    assert_eq!(rendered[0].children[0].name, "fragile");
    assert!(
        tree.get("test/fragile")
            .and_then(|i| i.last_error)
            .is_some_and(|e| e.contains("injected fault"))
    );

    sup.stop(None);
    join.await.expect("stops");
    assert_eq!(tree.get("test").map(|i| i.state), Some(ActorState::Stopped));
}

#[tokio::test]
async fn exceeding_the_restart_intensity_escalates() {
    let handle = ChildHandle::default();
    let tree = ActorTree::default();
    let policy = RestartPolicy {
        max_restarts: 2,
        window: Duration::from_secs(60),
        backoff_min: Duration::from_millis(5),
        backoff_max: Duration::from_millis(5),
    };
    let (_sup, join) = Actor::spawn(None, Supervisor, root(policy, &handle, &tree))
        .await
        .expect("starts");
    for n in 1..=3u64 {
        wait_for("child up", || {
            handle
                .get()
                .is_some_and(|a| a.get_status() == ractor::ActorStatus::Running)
        })
        .await;
        if let Some(child) = handle.get() {
            let _ = child.cast(FragileMsg::Panic);
        }
        wait_for("failure recorded", || {
            tree.get("test/fragile").is_some_and(|i| i.restarts >= n)
        })
        .await;
    }
    tokio::time::timeout(Duration::from_secs(5), join)
        .await
        .expect("supervisor gave up")
        .expect("joined");
    assert_eq!(tree.get("test").map(|i| i.state), Some(ActorState::Failed));
}

#[test]
fn backoff_doubles_and_is_capped() {
    let p = RestartPolicy {
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
        ..Default::default()
    };
    assert_eq!(p.backoff(1), Duration::from_millis(100));
    assert_eq!(p.backoff(2), Duration::from_millis(200));
    assert_eq!(p.backoff(4), Duration::from_millis(800));
    assert_eq!(p.backoff(9), Duration::from_secs(1));
}

/// A pool worker's handler with nothing to do.
struct Idle;

impl Batches for Idle {
    type Job = ();
    async fn handle(&self, _: Vec<()>) {}
}

#[tokio::test]
async fn a_worker_told_to_panic_is_not_told_again_until_it_was_restarted() {
    let pool = WorkerPool::<()>::new(1, 16);
    let tree = ActorTree::default();
    let args = SupervisorArgs {
        path: "pool".into(),
        children: pool.child_specs(Arc::new(Idle), 16),
        policy: RestartPolicy {
            backoff_min: Duration::from_millis(10),
            ..Default::default()
        },
        tree: tree.clone(),
        metrics: Metrics::new("test"),
    };
    let (sup, join) = Actor::spawn(None, Supervisor, args).await.expect("starts");
    wait_for("worker up", || {
        tree.get("pool/worker-0")
            .is_some_and(|i| i.state == ActorState::Running)
    })
    .await;

    assert!(pool.inject_panic(), "the running worker is told to panic");
    // Told already, dying or not yet: another `Panic` would be lost with it.
    assert!(!pool.inject_panic(), "the same worker is not told twice");
    wait_for("restart", || {
        tree.get("pool/worker-0")
            .is_some_and(|i| i.restarts == 1 && i.state == ActorState::Running)
    })
    .await;
    assert!(pool.inject_panic(), "its successor can be told");
    wait_for("second restart", || {
        tree.get("pool/worker-0")
            .is_some_and(|i| i.restarts == 2 && i.state == ActorState::Running)
    })
    .await;

    sup.stop(None);
    join.await.expect("stops");
}
