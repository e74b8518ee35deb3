//! Driving load: closed loop (C workers back to back) or open loop (a fixed-rate dispatcher with
//! at most C requests in flight).
//!
//! Both stop issuing at the deadline by themselves. A request still running then gets until
//! `deadline + drain_timeout`; if it has not answered by that time it is counted as an
//! `ABANDONED` error and given up on, so a run always ends within `duration + drain_timeout`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::SeedableRng;
use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{timeout_at, Instant};

use crate::profile::OpKind;
use crate::schedule::OpenLoopSchedule;
use crate::stats::{Recorder, Window};
use crate::target::{Outcome, Target};
use crate::workload::{Workload, WorkloadSpec};

/// How long in-flight requests may still take after the deadline, by default.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything about one run except the target.
#[derive(Debug, Clone)]
pub struct RunPlan {
    pub workload: WorkloadSpec,
    pub duration: Duration,
    /// `--ops`: stop issuing after this many operations (open loop: scheduled sends), or at the
    /// deadline, whichever comes first.
    pub max_ops: Option<u64>,
    /// Closed loop: number of workers. Open loop: the in-flight bound.
    pub concurrency: usize,
    /// `Some(ops/s)` for an open loop, `None` for a closed loop.
    pub rate_per_s: Option<f64>,
    pub seed: u64,
    pub drain_timeout: Duration,
    /// A stretch of the run whose requests are also reported apart (`--window`).
    pub window: Option<Window>,
}

/// What a run produced: merged tallies and the wall time from start to the last answer.
#[derive(Debug)]
pub struct RunResult {
    pub recorder: Recorder,
    pub elapsed: Duration,
}

/// Shared progress counters the progress bar reads while the run goes on.
#[derive(Debug, Default)]
pub struct Progress {
    /// Operations answered (any outcome).
    pub answered: AtomicU64,
    pub errors: AtomicU64,
}

impl Progress {
    fn note(&self, outcome: &Outcome) {
        self.answered.fetch_add(1, Ordering::Relaxed);
        if matches!(outcome, Outcome::Error { .. }) {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Runs the plan against `target` and returns once every worker has stopped.
pub async fn run<T: Target>(target: Arc<T>, plan: RunPlan, progress: Arc<Progress>) -> RunResult {
    let start = Instant::now();
    let deadline = start + plan.duration;
    let give_up = deadline + plan.drain_timeout;
    let recorder = match plan.rate_per_s {
        None => closed_loop(target, plan, deadline, give_up, progress).await,
        Some(rate) => {
            let schedule = OpenLoopSchedule::new(start, rate);
            open_loop(target, plan, schedule, deadline, give_up, progress).await
        }
    };
    RunResult {
        recorder,
        elapsed: start.elapsed(),
    }
}

/// The `--ops` budget the closed loop's workers share: each takes one operation before issuing.
#[derive(Debug)]
struct OpBudget {
    limit: u64,
    taken: AtomicU64,
}

impl OpBudget {
    /// False once `limit` operations were taken (the caller stops).
    fn take(&self) -> bool {
        self.taken.fetch_add(1, Ordering::Relaxed) < self.limit
    }
}

/// The generator of worker `index`: its own RNG stream derived from the run seed.
fn worker_rng(seed: u64, index: u64) -> SmallRng {
    SmallRng::seed_from_u64(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

async fn closed_loop<T: Target>(
    target: Arc<T>,
    plan: RunPlan,
    deadline: Instant,
    give_up: Instant,
    progress: Arc<Progress>,
) -> Recorder {
    let mut workers = JoinSet::new();
    let budget = plan.max_ops.map(|limit| {
        Arc::new(OpBudget {
            limit,
            taken: AtomicU64::new(0),
        })
    });
    for index in 0..plan.concurrency.max(1) {
        let target = Arc::clone(&target);
        let budget = budget.clone();
        let progress = Arc::clone(&progress);
        let mut rng = worker_rng(plan.seed, index as u64);
        let mut workload = Workload::new(plan.workload.clone());
        let (window, start) = (plan.window, deadline - plan.duration);
        workers.spawn(async move {
            let mut recorder = Recorder::with_window(window);
            while Instant::now() < deadline && budget.as_ref().is_none_or(|b| b.take()) {
                let op = workload.next_op(&mut rng);
                let kind = op.kind();
                let sent = Instant::now();
                let outcome = timeout_at(give_up, target.execute(op))
                    .await
                    .unwrap_or_else(|_| Outcome::abandoned());
                progress.note(&outcome);
                recorder.record_at(kind, outcome, sent.elapsed(), sent - start);
            }
            recorder
        });
    }
    collect(workers).await
}

/// What an open-loop request task hands back to the dispatcher.
struct Answered {
    kind: OpKind,
    outcome: Outcome,
    /// Send time minus intended time.
    lag: Duration,
    /// Answer time minus intended time: the latency that counts.
    latency: Duration,
    /// Intended time since the run started.
    at: Duration,
}

async fn open_loop<T: Target>(
    target: Arc<T>,
    plan: RunPlan,
    schedule: OpenLoopSchedule<Instant>,
    deadline: Instant,
    give_up: Instant,
    progress: Arc<Progress>,
) -> Recorder {
    let handle = Handle::current();
    let dispatcher =
        tokio::task::spawn_blocking(move || dispatch(handle, target, plan, schedule, deadline, give_up, progress));
    match dispatcher.await {
        Ok(recorder) => recorder,
        Err(e) => {
            let mut recorder = Recorder::new();
            recorder.record(
                OpKind::ALL[0],
                Outcome::Error {
                    code: "PANIC".into(),
                    message: e.to_string(),
                },
                Duration::ZERO,
            );
            recorder
        }
    }
}

/// The open-loop dispatcher. It runs on a blocking-pool thread and paces itself with the OS
/// sleep (precise to tens of µs) rather than tokio's timer, whose 1 ms ticks would add up to
/// 1 ms of client-made latency to requests measured from their intended time. Requests run as
/// tasks on the runtime; at most `plan.concurrency` at once.
fn dispatch<T: Target>(
    handle: Handle,
    target: Arc<T>,
    plan: RunPlan,
    schedule: OpenLoopSchedule<Instant>,
    deadline: Instant,
    give_up: Instant,
    progress: Arc<Progress>,
) -> Recorder {
    let permits = Arc::new(Semaphore::new(plan.concurrency.max(1)));
    let mut in_flight: JoinSet<Answered> = JoinSet::new();
    let mut recorder = Recorder::with_window(plan.window);
    let start = schedule.intended(0);
    let mut rng = worker_rng(plan.seed, 0);
    let mut workload = Workload::new(plan.workload);
    let mut next: u64 = 0;
    loop {
        let intended = schedule.intended(next);
        if intended >= deadline || plan.max_ops.is_some_and(|limit| next >= limit) {
            break;
        }
        next += 1;
        while let Some(done) = in_flight.try_join_next() {
            record_answer(&mut recorder, done);
        }
        let early = intended.saturating_duration_since(Instant::now());
        if !early.is_zero() {
            std::thread::sleep(early);
        }
        let op = workload.next_op(&mut rng);
        let kind = op.kind();
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            // The in-flight bound is full: the send is late beyond what we allow. Count it.
            recorder.record_dropped(kind, intended - start);
            continue;
        };
        let target = Arc::clone(&target);
        let progress = Arc::clone(&progress);
        in_flight.spawn_on(
            async move {
                let _permit = permit;
                let sent = Instant::now();
                let outcome = timeout_at(give_up, target.execute(op))
                    .await
                    .unwrap_or_else(|_| Outcome::abandoned());
                progress.note(&outcome);
                let answered = Instant::now();
                Answered {
                    kind,
                    outcome,
                    lag: sent.saturating_duration_since(intended),
                    latency: answered.saturating_duration_since(intended),
                    at: intended - start,
                }
            },
            &handle,
        );
    }
    handle.block_on(drain(in_flight, &mut recorder, give_up));
    recorder
}

/// Waits for the requests still in flight. Each ends by `give_up` on its own (its `timeout_at`);
/// the bound here is a backstop so the run ends even if one does not.
async fn drain(mut in_flight: JoinSet<Answered>, recorder: &mut Recorder, give_up: Instant) {
    let backstop = give_up + Duration::from_secs(1);
    loop {
        match timeout_at(backstop, in_flight.join_next()).await {
            Ok(Some(done)) => record_answer(recorder, done),
            Ok(None) => break,
            Err(_) => {
                in_flight.abort_all();
                break;
            }
        }
    }
}

fn record_answer(recorder: &mut Recorder, done: Result<Answered, tokio::task::JoinError>) {
    match done {
        Ok(a) => {
            recorder.record_schedule_lag(a.lag);
            recorder.record_at(a.kind, a.outcome, a.latency, a.at);
        }
        // A request task panicked; its kind is lost, so it is counted against the first kind.
        Err(e) => recorder.record(
            OpKind::ALL[0],
            Outcome::Error {
                code: "PANIC".into(),
                message: e.to_string(),
            },
            Duration::ZERO,
        ),
    }
}

async fn collect(mut workers: JoinSet<Recorder>) -> Recorder {
    let mut all = Recorder::new();
    while let Some(done) = workers.join_next().await {
        match done {
            Ok(r) => all.merge(&r),
            Err(e) => all.record(
                OpKind::ALL[0],
                Outcome::Error {
                    code: "PANIC".into(),
                    message: e.to_string(),
                },
                Duration::ZERO,
            ),
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::profile::Profile;
    use crate::stats::Summary;
    use crate::workload::{CartPicker, KeyDistribution, Op};

    /// An in-memory target: answers after `delay`, or never when `hang` is set.
    struct FakeTarget {
        delay: Duration,
        hang: bool,
        calls: AtomicUsize,
    }

    impl FakeTarget {
        fn new(delay: Duration, hang: bool) -> Arc<Self> {
            Arc::new(FakeTarget {
                delay,
                hang,
                calls: AtomicUsize::new(0),
            })
        }
    }

    impl Target for FakeTarget {
        async fn execute(&self, op: Op) -> Outcome {
            self.calls.fetch_add(1, Ordering::Relaxed);
            if self.hang {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(self.delay).await;
            match op {
                Op::RemoveItem { .. } => Outcome::NotFound,
                _ => Outcome::Ok,
            }
        }
    }

    fn plan(profile: Profile, duration_ms: u64, concurrency: usize, rate: Option<f64>) -> RunPlan {
        RunPlan {
            workload: WorkloadSpec {
                profile,
                carts: CartPicker::new(KeyDistribution::Zipf, 1_000).expect("picker"),
                cart_lines: 1,
            },
            duration: Duration::from_millis(duration_ms),
            max_ops: None,
            concurrency,
            rate_per_s: rate,
            seed: 1,
            drain_timeout: Duration::from_millis(200),
            window: None,
        }
    }

    fn totals(result: &RunResult) -> Summary {
        Summary::of(&result.recorder.overall(), result.elapsed)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closed_loop_stops_by_itself_and_counts_every_answer() {
        let target = FakeTarget::new(Duration::from_millis(1), false);
        let progress = Arc::new(Progress::default());
        let result = run(
            Arc::clone(&target),
            plan(Profile::Storefront, 300, 4, None),
            Arc::clone(&progress),
        )
        .await;
        let all = totals(&result);
        assert!(all.count > 0);
        assert_eq!(all.errors, 0);
        assert_eq!(all.count as usize, target.calls.load(Ordering::Relaxed));
        assert_eq!(all.count, progress.answered.load(Ordering::Relaxed));
        assert!(result.recorder.op(OpKind::RemoveItem).not_found > 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_loop_sends_exactly_the_scheduled_requests() {
        let target = FakeTarget::new(Duration::ZERO, false);
        let p = plan(Profile::Add, 300, 64, Some(1_000.0));
        let result = run(target, p, Arc::new(Progress::default())).await;
        let all = totals(&result);
        assert_eq!(
            all.count + all.errors + all.dropped,
            300,
            "1000/s over 300 ms is 300 requests"
        );
        assert_eq!(result.recorder.schedule_lag().len(), all.count + all.errors);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ops_stops_both_loops_after_that_many_operations() {
        // A minute's duration: without the budget these would run millions of operations.
        let target = FakeTarget::new(Duration::ZERO, false);
        let mut p = plan(Profile::Add, 60_000, 7, None);
        p.max_ops = Some(1_000);
        let result = run(Arc::clone(&target), p, Arc::new(Progress::default())).await;
        let all = totals(&result);
        assert_eq!((all.count, all.errors), (1_000, 0), "exactly --ops operations");
        assert_eq!(target.calls.load(Ordering::Relaxed), 1_000);

        let target = FakeTarget::new(Duration::ZERO, false);
        let mut p = plan(Profile::Add, 60_000, 64, Some(10_000.0));
        p.max_ops = Some(500);
        let result = run(Arc::clone(&target), p, Arc::new(Progress::default())).await;
        let all = totals(&result);
        assert_eq!(
            all.count + all.errors + all.dropped,
            500,
            "exactly --ops sends scheduled"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sequential_preload_with_ops_writes_each_cart_once() {
        /// Records the carts it is asked to write.
        struct Carts(std::sync::Mutex<Vec<String>>);
        impl Target for Carts {
            async fn execute(&self, op: Op) -> Outcome {
                if let Ok(mut carts) = self.0.lock() {
                    carts.push(op.cart_id().to_owned());
                }
                Outcome::Ok
            }
        }
        let target = Arc::new(Carts(std::sync::Mutex::new(Vec::new())));
        let mut p = plan(Profile::Add, 60_000, 16, None);
        p.workload.carts = CartPicker::new(KeyDistribution::Sequential, 2_000).expect("picker");
        p.max_ops = Some(2_000);
        let result = run(Arc::clone(&target), p, Arc::new(Progress::default())).await;
        assert_eq!(totals(&result).count, 2_000);
        let mut carts = target.0.lock().expect("not poisoned").clone();
        carts.sort();
        carts.dedup();
        assert_eq!(carts.len(), 2_000, "every cart of the population written once");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hung_target_is_abandoned_and_the_bound_drops_the_rest() {
        let target = FakeTarget::new(Duration::ZERO, true);
        let p = plan(Profile::Add, 200, 8, Some(500.0));
        let result = run(Arc::clone(&target), p, Arc::new(Progress::default())).await;
        let all = totals(&result);
        assert_eq!(all.count, 0);
        assert_eq!(all.errors, 8, "the 8 permitted requests are abandoned");
        assert_eq!(
            all.dropped,
            100 - 8,
            "every other scheduled request is counted as dropped"
        );
        assert_eq!(result.recorder.overall().error_codes.get("ABANDONED"), Some(&8));

        let closed = run(target, plan(Profile::Add, 100, 3, None), Arc::new(Progress::default())).await;
        let all = totals(&closed);
        assert_eq!(
            (all.count, all.errors),
            (0, 3),
            "each closed-loop worker abandons its one request"
        );
    }
}
