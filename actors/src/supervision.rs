//! Supervision: a small OTP-style supervisor for ractor, which has no restarts built in.
//!
//! A [`Supervisor`] starts its children in order, restarts one that fails (panic, `Err`, or
//! an unexpected stop) after an exponential backoff, and escalates by failing itself when
//! more than `max_restarts` happen within `window`. Its own supervisor then restarts it; at
//! the root the node exits non-zero so the orchestrator restarts the process.
//!
//! Callers never hold a child's `ActorRef` directly: they hold a [`ChildHandle`], which the
//! supervisor updates on every restart, so a restarted actor is reachable at once.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SpawnErr, SupervisionEvent};
use serde::Serialize;

use crate::faults::PanicOnce;
use crate::metrics::Metrics;
use crate::work::WorkQueue;

/// The current `ActorRef` of a supervised child, updated on every (re)start.
pub struct ChildHandle<M>(Arc<RwLock<Option<ActorRef<M>>>>);

impl<M> Clone for ChildHandle<M> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<M> Default for ChildHandle<M> {
    fn default() -> Self {
        Self(Arc::new(RwLock::new(None)))
    }
}

impl<M: ractor::Message> ChildHandle<M> {
    /// The running actor, if it is up right now.
    pub fn get(&self) -> Option<ActorRef<M>> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, actor: Option<ActorRef<M>>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = actor;
    }

    /// Sends without waiting; `false` when the actor is down (e.g. restarting).
    pub fn cast(&self, msg: M) -> bool {
        self.get().is_some_and(|a| a.cast(msg).is_ok())
    }
}

/// What a pool worker does with the jobs it pulls: everything that was waiting, at once.
pub trait Batches: Send + Sync + 'static {
    type Job: Send + 'static;
    /// Handles `jobs` (answering each on its own reply port). A panic here fails the worker,
    /// whose supervisor restarts it; the callers of this batch get an error.
    fn handle(&self, jobs: Vec<Self::Job>) -> impl Future<Output = ()> + Send;
}

/// Messages of a pool worker's own mailbox (jobs arrive through the [`WorkQueue`]).
pub enum WorkerMsg {
    /// Pull the next batch (sent by the worker to itself).
    Pull,
    /// Fault injection for tests and drills: the worker panics.
    Panic,
}

/// A pool worker: pulls batches from the shared queue and hands them to its [`Batches`].
pub struct PullWorker<B>(std::marker::PhantomData<fn() -> B>);

impl<B> Default for PullWorker<B> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

/// What a pool worker is started with.
pub struct PullArgs<B: Batches> {
    pub handler: Arc<B>,
    pub queue: WorkQueue<B::Job>,
    pub max_batch: usize,
}

impl<B: Batches> Clone for PullArgs<B> {
    fn clone(&self) -> Self {
        Self {
            handler: self.handler.clone(),
            queue: self.queue.clone(),
            max_batch: self.max_batch,
        }
    }
}

/// How long a worker waits for work before looking at its mailbox again (a stop request).
const PULL_WAIT: Duration = Duration::from_millis(200);

impl<B: Batches> Actor for PullWorker<B> {
    type Msg = WorkerMsg;
    type State = PullArgs<B>;
    type Arguments = PullArgs<B>;

    async fn pre_start(
        &self,
        myself: ActorRef<WorkerMsg>,
        args: PullArgs<B>,
    ) -> Result<PullArgs<B>, ActorProcessingErr> {
        myself.cast(WorkerMsg::Pull)?;
        Ok(args)
    }

    async fn handle(
        &self,
        myself: ActorRef<WorkerMsg>,
        msg: WorkerMsg,
        state: &mut PullArgs<B>,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WorkerMsg::Pull => {
                let mut batch = Vec::new();
                if state
                    .queue
                    .take(&mut batch, state.max_batch, PULL_WAIT)
                    .await
                    > 0
                {
                    state.handler.handle(batch).await;
                }
                myself.cast(WorkerMsg::Pull)?;
                Ok(())
            }
            WorkerMsg::Panic => panic!("injected fault: store worker panic"),
        }
    }
}

/// A fixed set of interchangeable workers, each supervised on its own, pulling from one
/// [`WorkQueue`]: the least busy worker takes the next job, so no single actor serialises
/// the hot path and no job waits behind a slow worker while another is idle.
pub struct WorkerPool<J> {
    workers: Arc<[PoolWorker]>,
    queue: WorkQueue<J>,
    next_fault: Arc<AtomicUsize>,
}

/// One worker of a pool: the handle its supervisor keeps current across restarts, and
/// whether fault injection told its current incarnation to panic already.
#[derive(Default)]
struct PoolWorker {
    handle: ChildHandle<WorkerMsg>,
    panic: PanicOnce,
}

impl<J> Clone for WorkerPool<J> {
    fn clone(&self) -> Self {
        Self {
            workers: self.workers.clone(),
            queue: self.queue.clone(),
            next_fault: self.next_fault.clone(),
        }
    }
}

impl<J: Send + 'static> WorkerPool<J> {
    /// `size` workers sharing a queue of at most `capacity` waiting jobs.
    pub fn new(size: usize, capacity: usize) -> Self {
        Self {
            workers: (0..size.max(1)).map(|_| PoolWorker::default()).collect(),
            queue: WorkQueue::new(capacity),
            next_fault: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The queue callers submit jobs to.
    pub fn queue(&self) -> &WorkQueue<J> {
        &self.queue
    }

    /// One supervised child per worker, `worker-0` … `worker-N`, each handing the batches
    /// it pulls (at most `max_batch` jobs) to `handler`.
    pub fn child_specs<B: Batches<Job = J>>(
        &self,
        handler: Arc<B>,
        max_batch: usize,
    ) -> Vec<ChildSpec> {
        let args = PullArgs {
            handler,
            queue: self.queue.clone(),
            max_batch,
        };
        self.workers
            .iter()
            .enumerate()
            .map(|(i, worker)| {
                let args = args.clone();
                ChildSpec::new(format!("worker-{i}"), worker.handle.clone(), move || {
                    (PullWorker::<B>::default(), args.clone())
                })
            })
            .collect()
    }

    /// Makes one running worker panic, a different one on each call. `false` if none runs
    /// that has not been told to panic already.
    pub fn inject_panic(&self) -> bool {
        let n = self.workers.len();
        let start = self.next_fault.fetch_add(1, Ordering::Relaxed);
        (0..n).map(|i| (start + i) % n).any(|i| {
            let worker = &self.workers[i];
            worker.panic.send(&worker.handle, WorkerMsg::Panic)
        })
    }
}

type StartFuture = Pin<Box<dyn Future<Output = Result<ActorCell, SpawnErr>> + Send>>;
type StartFn = Arc<dyn Fn(ActorCell) -> StartFuture + Send + Sync>;

/// How to (re)start one child.
#[derive(Clone)]
pub struct ChildSpec {
    name: String,
    start: StartFn,
}

impl ChildSpec {
    /// A child built afresh by `make` on every start, reachable through `handle`.
    pub fn new<A, F>(name: impl Into<String>, handle: ChildHandle<A::Msg>, make: F) -> Self
    where
        A: Actor,
        F: Fn() -> (A, A::Arguments) + Send + Sync + 'static,
    {
        let make = Arc::new(make);
        let start: StartFn = Arc::new(move |supervisor: ActorCell| {
            let make = make.clone();
            let handle = handle.clone();
            Box::pin(async move {
                let (actor, args) = make();
                let (actor_ref, _join) = Actor::spawn_linked(None, actor, args, supervisor).await?;
                handle.set(Some(actor_ref.clone()));
                Ok(actor_ref.get_cell())
            })
        });
        Self {
            name: name.into(),
            start,
        }
    }

    /// A nested supervisor as a child.
    pub fn supervisor(name: impl Into<String>, args: SupervisorArgs) -> Self {
        let name = name.into();
        let handle = ChildHandle::<SupervisorMsg>::default();
        Self::new(name, handle, move || (Supervisor, args.clone()))
    }
}

/// Restart intensity and backoff.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    /// More restarts than this within `window` escalate to the parent.
    pub max_restarts: usize,
    pub window: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            max_restarts: 5,
            window: Duration::from_secs(30),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
        }
    }
}

impl RestartPolicy {
    /// The delay before the `n`-th restart within the window (n ≥ 1): doubling from
    /// `backoff_min`, capped at `backoff_max`.
    pub fn backoff(&self, n: usize) -> Duration {
        let attempt = u32::try_from(n).unwrap_or(u32::MAX);
        crate::backoff::exponential(self.backoff_min, self.backoff_max, attempt)
    }
}

/// The live supervision tree as `GET /actors` shows it, shared by all supervisors of a node.
#[derive(Clone, Default)]
pub struct ActorTree {
    /// Each actor by path, with the sequence number of its first start: children are shown
    /// in start order (`worker-2` before `worker-10`), not in the order of their names.
    actors: Arc<Mutex<BTreeMap<String, (u64, ActorInfo)>>>,
    /// `(traceparent, tracestate)` of the node's root supervision span: every lifecycle
    /// span joins that trace, so a trace backend shows the node's supervision history.
    supervision_trace: Arc<Mutex<(Option<String>, Option<String>)>>,
}

/// One actor's entry in the tree.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ActorInfo {
    pub state: ActorState,
    pub restarts: u64,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ActorState {
    Running,
    Restarting,
    Stopped,
    /// Gave up: its restart intensity was exceeded and it escalated.
    Failed,
}

/// A node of the rendered tree.
#[derive(Debug, Clone, Serialize)]
pub struct ActorNode {
    pub name: String,
    pub state: ActorState,
    pub restarts: u64,
    pub last_error: Option<String>,
    pub children: Vec<ActorNode>,
}

impl ActorTree {
    /// Starts the node's supervision trace; lifecycle spans of every supervisor in this
    /// tree become its children.
    fn begin_supervision_trace(&self, node: &str) -> tracing::Span {
        let span = tracing::info_span!(parent: None, "supervision", otel.name = %format!("{node} supervision"), node = node);
        *self
            .supervision_trace
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = crate::telemetry::trace_headers(&span);
        span
    }

    /// A short span for one lifecycle event (`actor started`, `actor failed`, `actor
    /// restarted`) in the node's supervision trace.
    fn lifecycle_span(&self, name: &'static str, actor: &str) -> tracing::Span {
        let span = tracing::info_span!(
            parent: None,
            "lifecycle",
            otel.name = name,
            actor = actor,
            error = tracing::field::Empty,
            restarts = tracing::field::Empty,
        );
        let (tp, ts) = self
            .supervision_trace
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        crate::telemetry::set_remote_parent(&span, tp.as_deref(), ts.as_deref());
        span
    }

    fn update(&self, path: &str, f: impl FnOnce(&mut ActorInfo)) {
        let mut map = self.actors.lock().unwrap_or_else(PoisonError::into_inner);
        let seq = map.len() as u64;
        let (_, info) = map.entry(path.to_owned()).or_insert((
            seq,
            ActorInfo {
                state: ActorState::Running,
                restarts: 0,
                last_error: None,
            },
        ));
        f(info);
    }

    /// One actor's entry, by its path (`root/child/grandchild`).
    pub fn get(&self, path: &str) -> Option<ActorInfo> {
        self.actors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(path)
            .map(|(_, info)| info.clone())
    }

    /// Whether every actor in the tree is running.
    pub fn all_running(&self) -> bool {
        let map = self.actors.lock().unwrap_or_else(PoisonError::into_inner);
        !map.is_empty() && map.values().all(|(_, i)| i.state == ActorState::Running)
    }

    /// The paths of the actors that are not running, in start order.
    pub fn not_running(&self) -> Vec<String> {
        let map = self.actors.lock().unwrap_or_else(PoisonError::into_inner);
        let mut down: Vec<(u64, String)> = map
            .iter()
            .filter(|(_, (_, i))| i.state != ActorState::Running)
            .map(|(path, (seq, _))| (*seq, path.clone()))
            .collect();
        down.sort();
        down.into_iter().map(|(_, path)| path).collect()
    }

    /// The tree, nested by path.
    pub fn render(&self) -> Vec<ActorNode> {
        let map = self
            .actors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        fn children_of(
            map: &BTreeMap<String, (u64, ActorInfo)>,
            prefix: Option<&str>,
        ) -> Vec<ActorNode> {
            let mut children: Vec<(u64, ActorNode)> = map
                .iter()
                .filter(|(path, _)| match prefix {
                    None => !path.contains('/'),
                    Some(p) => path
                        .strip_prefix(p)
                        .and_then(|rest| rest.strip_prefix('/'))
                        .is_some_and(|rest| !rest.contains('/')),
                })
                .map(|(path, (seq, info))| {
                    let node = ActorNode {
                        name: path.rsplit('/').next().unwrap_or(path).to_owned(),
                        state: info.state,
                        restarts: info.restarts,
                        last_error: info.last_error.clone(),
                        children: children_of(map, Some(path)),
                    };
                    (*seq, node)
                })
                .collect();
            children.sort_by_key(|(seq, _)| *seq);
            children.into_iter().map(|(_, node)| node).collect()
        }
        children_of(&map, None)
    }
}

/// Arguments of a [`Supervisor`].
#[derive(Clone)]
pub struct SupervisorArgs {
    /// Path of this supervisor in the tree, e.g. `orders-node` or `orders-node/store`.
    pub path: String,
    pub children: Vec<ChildSpec>,
    pub policy: RestartPolicy,
    pub tree: ActorTree,
    pub metrics: Metrics,
}

impl SupervisorArgs {
    /// Arguments for a nested supervisor below this one.
    pub fn nested(&self, name: &str, children: Vec<ChildSpec>) -> SupervisorArgs {
        SupervisorArgs {
            path: format!("{}/{name}", self.path),
            children,
            policy: self.policy,
            tree: self.tree.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// Messages a supervisor sends itself.
pub enum SupervisorMsg {
    Restart(usize),
}

/// The supervisor actor. It owns its children's lifecycles and nothing else; see the module
/// documentation for its restart rules. When it fails itself (escalation), its parent
/// restarts it, which restarts all of its children.
pub struct Supervisor;

pub struct SupervisorState {
    args: SupervisorArgs,
    children: Vec<ChildState>,
}

struct ChildState {
    cell: Option<ActorCell>,
    recent_restarts: VecDeque<Instant>,
}

impl SupervisorState {
    fn child_path(&self, idx: usize) -> String {
        format!("{}/{}", self.args.path, self.args.children[idx].name)
    }

    fn index_of(&self, cell: &ActorCell) -> Option<usize> {
        self.children.iter().position(|c| {
            c.cell
                .as_ref()
                .is_some_and(|own| own.get_id() == cell.get_id())
        })
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let mut state = SupervisorState {
            children: Vec::new(),
            args,
        };
        // The root supervisor opens the node's supervision trace.
        let _root_span = (!state.args.path.contains('/'))
            .then(|| state.args.tree.begin_supervision_trace(&state.args.path));
        state
            .args
            .tree
            .update(&state.args.path, |i| i.state = ActorState::Running);
        for idx in 0..state.args.children.len() {
            let spec = state.args.children[idx].clone();
            let path = state.child_path(idx);
            let cell = (spec.start)(myself.get_cell()).await.map_err(|e| {
                let span = state.args.tree.lifecycle_span("actor failed", &path);
                span.record("error", tracing::field::display(&e));
                span.in_scope(
                    || tracing::error!(actor = %path, error = %e, "actor failed to start"),
                );
                format!("{path} failed to start: {e}")
            })?;
            let span = state.args.tree.lifecycle_span("actor started", &path);
            span.in_scope(|| tracing::info!(actor = %path, "actor started"));
            // The series exists from the start at 0, so "no crash" differs from "no metric".
            let _ = state
                .args
                .metrics
                .actor_restarts
                .with_label_values(&[path.as_str()]);
            state
                .args
                .tree
                .update(&path, |i| i.state = ActorState::Running);
            state.children.push(ChildState {
                cell: Some(cell),
                recent_restarts: VecDeque::new(),
            });
        }
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        // Stop children in reverse start order, so intake stops before the store it uses.
        for idx in (0..state.children.len()).rev() {
            if let Some(cell) = state.children[idx].cell.take() {
                cell.unlink(_myself.get_cell());
                let _ = cell
                    .stop_and_wait(Some("supervisor stopping".into()), None)
                    .await;
            }
            state
                .args
                .tree
                .update(&state.child_path(idx), |i| i.state = ActorState::Stopped);
        }
        state.args.tree.update(&state.args.path, |i| {
            if i.state != ActorState::Failed {
                i.state = ActorState::Stopped;
            }
        });
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let SupervisorMsg::Restart(idx) = message;
        let path = state.child_path(idx);
        let spec = state.args.children[idx].clone();
        match (spec.start)(myself.get_cell()).await {
            Ok(cell) => {
                state.children[idx].cell = Some(cell);
                let restarts = state.children[idx].recent_restarts.len();
                let span = state.args.tree.lifecycle_span("actor restarted", &path);
                span.record("restarts", restarts);
                span.in_scope(|| tracing::info!(actor = %path, restarts, "actor restarted"));
                state
                    .args
                    .tree
                    .update(&path, |i| i.state = ActorState::Running);
                Ok(())
            }
            Err(e) => self.on_child_down(&myself, state, idx, format!("restart failed: {e}")),
        }
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (
                cell,
                reason.unwrap_or_else(|| "stopped unexpectedly".into()),
            ),
            _ => return Ok(()),
        };
        let Some(idx) = state.index_of(&cell) else {
            return Ok(());
        };
        state.children[idx].cell = None;
        self.on_child_down(&myself, state, idx, reason)
    }
}

impl Supervisor {
    /// Records a child's failure and schedules its restart, or escalates when the restart
    /// intensity is exceeded.
    fn on_child_down(
        &self,
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        idx: usize,
        reason: String,
    ) -> Result<(), ActorProcessingErr> {
        let path = state.child_path(idx);
        let policy = state.args.policy;
        let now = Instant::now();
        let recent = &mut state.children[idx].recent_restarts;
        while recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > policy.window)
        {
            recent.pop_front();
        }
        recent.push_back(now);
        let attempt = recent.len();
        let span = state.args.tree.lifecycle_span("actor failed", &path);
        span.record("error", reason.as_str());
        span.record("restarts", attempt);
        span.in_scope(|| tracing::error!(actor = %path, error = %reason, attempt, "actor failed"));
        state
            .args
            .metrics
            .actor_restarts
            .with_label_values(&[path.as_str()])
            .inc();
        state.args.tree.update(&path, |i| {
            i.state = ActorState::Restarting;
            i.restarts += 1;
            i.last_error = Some(reason.clone());
        });
        if attempt > policy.max_restarts {
            span.in_scope(
                || tracing::error!(actor = %path, "restart intensity exceeded; escalating"),
            );
            state
                .args
                .tree
                .update(&state.args.path, |i| i.state = ActorState::Failed);
            return Err(format!(
                "{path} failed {attempt} times within {:?}: {reason}",
                policy.window
            )
            .into());
        }
        let delay = policy.backoff(attempt);
        myself.send_after(delay, move || SupervisorMsg::Restart(idx));
        Ok(())
    }
}

#[cfg(test)]
mod tests;
