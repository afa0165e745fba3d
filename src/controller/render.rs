//! Rendering off the runtime thread, within limits.
//!
//! Every render runs on a render thread of its controller, so the runtime thread that serves
//! signals, health, the watches and the other resources never waits for a template. A render
//! has a time limit and an output limit: past the time limit the resource fails, the render
//! is told to stop (it stops at its next write or function call) and its result, if it ever
//! comes, is dropped; until its thread has ended the resource is not rendered again, so a
//! runaway template holds one thread at most. A controller renders one template at a time
//! (renders allocate heavily, and two on one allocator mostly wait for each other), a round's
//! renders queued together so its thread runs them back to back; a render still running
//! after [`ROUND_GRACE`] hands the queue to a new thread, so the renders after it start
//! beside it.
//!
//! A resource whose `min_keys` the snapshot does not meet is not rendered at all, nor is one
//! that sees a key whose value is not UTF-8: it fails naming the key, as no template can be
//! given that value unchanged, and dropping or mending it would write a configuration the
//! store does not hold.
//!
//! A round renders its resources concurrently and is committed as one batch. Renders still
//! running [`ROUND_GRACE`] after the round began do not hold the others back: the round
//! commits without them (and without the other templates of their files), and each file's
//! are committed as a batch of their own as soon as that file's renders have ended.

use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::stream::{BoxStream, FuturesUnordered, SelectAll};
use futures_util::{Stream, StreamExt};

use super::{Prepared, Shutdown, now, sleep_until};
use crate::reconcile::md5_hex;
use crate::resource::Resource;
use crate::store::Snapshot;
use crate::template::{RenderBounds, SharedResults, TemplateError, View};

/// How long a round waits for its slowest render before committing the others.
pub(crate) const ROUND_GRACE: Duration = Duration::from_secs(1);

/// The limits of one render.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RenderLimits {
    /// Longest a render may take.
    pub(crate) timeout: Duration,
    /// Most bytes its output may have.
    pub(crate) max_size: u64,
}

/// One resource rendered for a batch.
#[derive(Debug)]
pub(crate) struct Rendered {
    /// The resource's index in its controller.
    pub(crate) index: usize,
    /// The content, or why there is none.
    pub(crate) content: Result<Arc<String>, NotRendered>,
    /// The md5 of the content, computed on the render thread once for the comparison with
    /// the destination and the status; `None` for a secret resource (a checksum of a short
    /// secret gives it away) or without content.
    pub(crate) md5: Option<String>,
    /// How long rendering took.
    pub(crate) time: Duration,
}

/// Why a resource has no content to sync.
#[derive(Clone, Debug)]
pub(crate) enum NotRendered {
    /// Its render failed.
    Failed(RenderFailure),
    /// The snapshot holds fewer keys under its prefixes than its `min_keys`, so it was not
    /// rendered: its destination stays as it is.
    TooFewKeys(TooFewKeys),
}

/// A resource held back by its `min_keys`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TooFewKeys {
    /// The keys found under its prefixes.
    pub(crate) found: usize,
    /// Its `min_keys`.
    pub(crate) min: usize,
}

/// How far the keys `resource` sees in `snapshot` fall short of its `min_keys`, if they do.
pub(crate) fn too_few_keys(resource: &Resource, snapshot: &Snapshot) -> Option<TooFewKeys> {
    let min = resource.min_keys.filter(|min| *min > 0)?;
    let found = snapshot.count_under(&resource.keys, min);
    (found < min).then_some(TooFewKeys { found, min })
}

/// Why a resource could not be rendered.
#[derive(Clone, Debug)]
pub(crate) struct RenderFailure {
    /// The error, naming the resource file and the template's file, line and column.
    pub(crate) message: String,
    /// It may pass without new data (a DNS lookup that failed), so the resource is retried.
    pub(crate) may_pass: bool,
}

/// The renders of one controller: the threads they may use, the renders still running after
/// their round was committed, and the resources whose render thread has not ended.
pub(crate) struct Renders {
    /// The render threads and their queue.
    threads: Arc<Threads>,
    /// For each resource: a render of it is queued or still running.
    running: Vec<Arc<AtomicBool>>,
    /// Renders that outlived their round: a batch for each resource file, to commit as soon
    /// as that file's renders have ended.
    late: SelectAll<BoxStream<'static, Vec<Rendered>>>,
    /// Resources in `late`.
    late_indexes: BTreeSet<usize>,
    /// Resources asked for while they were in `late`: rendered again once it ends.
    deferred: BTreeSet<usize>,
}

impl Renders {
    /// Render state for `resources` resources.
    pub(crate) fn new(resources: usize) -> Renders {
        Renders {
            threads: Threads::new(),
            running: (0..resources).map(|_| Arc::default()).collect(),
            late: SelectAll::new(),
            late_indexes: BTreeSet::new(),
            deferred: BTreeSet::new(),
        }
    }

    /// Renders `indexes` of `prepared` from `snapshot` and returns what is done once all are,
    /// or, with a `grace`, once that has passed (the rest goes on as a late batch). `None`
    /// when shutdown came first: the renders are told to stop and nothing is committed.
    pub(crate) async fn round(
        &mut self,
        indexes: BTreeSet<usize>,
        prepared: &[Arc<Prepared>],
        snapshot: &Arc<Snapshot>,
        grace: Option<Duration>,
        shutdown: &mut Shutdown,
    ) -> Option<Vec<Rendered>> {
        let shared: Arc<SharedResults> = Arc::default();
        let mut done = Vec::new();
        let mut pending = FuturesUnordered::new();
        let mut waiting = BTreeSet::new();
        for index in indexes {
            if self.late_indexes.contains(&index) {
                self.deferred.insert(index);
                continue;
            }
            let member = Arc::clone(&prepared[index]);
            if let Some(too_few) = too_few_keys(&member.resource, snapshot) {
                done.push(Rendered {
                    index,
                    content: Err(NotRendered::TooFewKeys(too_few)),
                    md5: None,
                    time: Duration::ZERO,
                });
                continue;
            }
            if let Some((key, fault)) = snapshot.first_not_utf8(&member.resource.keys) {
                done.push(Rendered {
                    index,
                    content: Err(NotRendered::Failed(RenderFailure {
                        message: format!(
                            "{}: key {key}: value is {fault}; {} is left as it is",
                            member.resource.file.display(),
                            member.resource.dest.display()
                        ),
                        // Only a new value mends it, and that comes as a change of the key.
                        may_pass: false,
                    })),
                    md5: None,
                    time: Duration::ZERO,
                });
                continue;
            }
            if self.running[index].load(Ordering::Acquire) {
                done.push(Rendered {
                    index,
                    content: Err(NotRendered::Failed(RenderFailure {
                        message: format!(
                            "{}: {}: the previous render, stopped at its time limit, has not \
                             ended yet",
                            member.resource.file.display(),
                            member.resource.src.display()
                        ),
                        may_pass: true,
                    })),
                    md5: None,
                    time: Duration::ZERO,
                });
                continue;
            }
            let view = View {
                snapshot: Arc::clone(snapshot),
                prefix: member.resource.prefix.clone(),
                keys: member.resource.keys.clone(),
                shared: Arc::clone(&shared),
            };
            waiting.insert(index);
            pending.push(render(
                index,
                member,
                view,
                Arc::clone(&self.threads),
                Arc::clone(&self.running[index]),
            ));
        }
        // The renders hold the round's listings from here on, so the last of them frees them
        // on its render thread once it has answered, not this thread before the round commits
        // (10,000 listed keys are 40,000 allocations to free).
        drop(shared);
        let deadline = grace.map(|grace| now() + grace);
        loop {
            tokio::select! {
                next = pending.next() => match next {
                    Some(rendered) => {
                        waiting.remove(&rendered.index);
                        done.push(rendered);
                    }
                    None => return Some(done),
                },
                () = sleep_until(deadline) => break,
                () = shutdown.wait() => return None,
            }
        }
        self.threads.unblock();
        // The templates of one file are committed together: those whose file still has a
        // render running wait for it.
        let late_files: BTreeSet<&Path> = waiting
            .iter()
            .map(|index| prepared[*index].resource.file.as_path())
            .collect();
        let (held, now_done): (Vec<Rendered>, Vec<Rendered>) = done
            .into_iter()
            .partition(|r| late_files.contains(prepared[r.index].resource.file.as_path()));
        self.late_indexes.extend(waiting.iter().copied());
        self.late_indexes
            .extend(held.iter().map(|rendered| rendered.index));
        self.late
            .push(late_batches(pending, held, waiting, prepared.to_vec()).boxed());
        Some(now_done)
    }

    /// The next late batch, once the renders of its resource file have ended; never while
    /// there is none.
    pub(crate) async fn next_late(&mut self) -> Vec<Rendered> {
        match self.late.next().await {
            Some(batch) => {
                for rendered in &batch {
                    self.late_indexes.remove(&rendered.index);
                }
                batch
            }
            None => std::future::pending().await,
        }
    }

    /// Resources asked for while their render was late whose render has now ended: they are
    /// rendered again from the newest data.
    pub(crate) fn take_deferred(&mut self) -> BTreeSet<usize> {
        let ready: BTreeSet<usize> = self
            .deferred
            .iter()
            .filter(|index| !self.late_indexes.contains(index))
            .copied()
            .collect();
        self.deferred.retain(|index| !ready.contains(index));
        ready
    }
}

impl Drop for Renders {
    fn drop(&mut self) {
        self.threads.close();
    }
}

/// The renders of a round still `pending` after its grace (`waiting` holds their indexes
/// in `prepared`), with the finished ones `held` for them, as one batch per resource file once
/// all of that file's renders have ended.
fn late_batches(
    pending: FuturesUnordered<impl Future<Output = Rendered> + Send + 'static>,
    held: Vec<Rendered>,
    waiting: BTreeSet<usize>,
    prepared: Vec<Arc<Prepared>>,
) -> impl Stream<Item = Vec<Rendered>> + Send + 'static {
    futures_util::stream::unfold(
        (pending, held, waiting, prepared),
        |(mut pending, mut held, mut waiting, prepared)| async move {
            // Indexes in a round are indexes of `prepared`.
            let file_of = |index: usize| prepared[index].resource.file.as_path();
            loop {
                let rendered = pending.next().await?;
                waiting.remove(&rendered.index);
                let file = file_of(rendered.index);
                held.push(rendered);
                if waiting.iter().all(|index| file_of(*index) != file) {
                    let (batch, rest): (Vec<Rendered>, Vec<Rendered>) =
                        held.into_iter().partition(|r| file_of(r.index) == file);
                    return Some((batch, (pending, rest, waiting, prepared)));
                }
            }
        },
    )
}

/// Marks a resource's render as ended when its job ends, however it ends, or is dropped
/// unrun.
struct Running(Arc<AtomicBool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Tells a render to stop when its caller stops waiting for it (time limit, shutdown).
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A job for a render thread, given the number of the thread that runs it.
type Job = Box<dyn FnOnce(u64) + Send>;

/// The render threads of one controller and the queue of renders they share. One
/// long-lived thread, the primary, keeps the memory a render touches (its stack, the
/// allocator's per-thread cache) in one place; a pool thread per render left a little of it
/// behind on every thread the pool kept. A round's renders are queued at once, so the thread
/// runs them back to back instead of sleeping and being woken between them. A render still
/// running after [`ROUND_GRACE`] makes a new thread the primary, which takes over the queue;
/// the old one ends once its render does.
struct Threads {
    state: Mutex<Queue>,
    work: Condvar,
}

/// What the render threads share.
#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// The one thread that serves the queue (0: none, until the next job is queued).
    primary: u64,
    /// The primary is running a job.
    primary_busy: bool,
    /// The number of the thread started last.
    last_thread: u64,
    /// The controller is gone: the threads end.
    closed: bool,
}

impl Threads {
    fn new() -> Arc<Threads> {
        Arc::new(Threads {
            state: Mutex::default(),
            work: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A job's panic is caught outside the lock, so no panic can poison it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `job`, starting the primary thread first if there is none.
    fn queue(self: &Arc<Self>, job: Job) -> std::io::Result<()> {
        let mut queue = self.lock();
        if queue.primary == 0 {
            queue.primary = self.spawn(&mut queue)?;
        }
        queue.jobs.push_back(job);
        drop(queue);
        self.work.notify_one();
        Ok(())
    }

    /// Makes a new thread the primary in place of `stuck`, whose render has outlived
    /// [`ROUND_GRACE`], unless that was done already.
    fn replace(self: &Arc<Self>, stuck: u64) {
        let mut queue = self.lock();
        if queue.primary != stuck || queue.closed {
            return;
        }
        match self.spawn(&mut queue) {
            Ok(thread) => {
                queue.primary = thread;
                queue.primary_busy = false;
            }
            Err(e) => {
                // The renders queued behind the slow one fail rather than wait for it; the
                // next render queued tries to start a thread again.
                tracing::warn!("cannot start another render thread: {e}");
                queue.primary = 0;
                queue.primary_busy = false;
                let dropped = std::mem::take(&mut queue.jobs);
                drop(queue);
                drop(dropped);
            }
        }
    }

    /// Makes a new thread the primary if renders are queued behind a running one: a round
    /// that commits without its slow renders leaves those queued behind them free to start
    /// while it commits, whether or not their tasks are polled meanwhile.
    fn unblock(self: &Arc<Self>) {
        let queue = self.lock();
        if queue.closed || !queue.primary_busy || queue.jobs.is_empty() {
            return;
        }
        let busy = queue.primary;
        drop(queue);
        self.replace(busy);
    }

    /// Starts a thread serving the queue; returns its number.
    fn spawn(self: &Arc<Self>, queue: &mut Queue) -> std::io::Result<u64> {
        let number = queue.last_thread + 1;
        let threads = Arc::clone(self);
        std::thread::Builder::new()
            .name("reconfd-render".to_string())
            .spawn(move || threads.serve(number))?;
        queue.last_thread = number;
        Ok(number)
    }

    /// Runs queued jobs until the controller is gone or, once the queue is empty, until the
    /// thread is no longer the primary.
    fn serve(&self, number: u64) {
        let mut queue = self.lock();
        loop {
            // A thread no longer the primary ends once its job has: renders run one at a
            // time but for the slow one it was running.
            if queue.closed || queue.primary != number {
                return;
            }
            let Some(job) = queue.jobs.pop_front() else {
                queue = self.work.wait(queue).unwrap_or_else(|e| e.into_inner());
                continue;
            };
            queue.primary_busy = true;
            drop(queue);
            // A render that panics drops its reply, which its caller reports; the thread
            // goes on with the next one.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(number)));
            queue = self.lock();
            if queue.primary == number {
                queue.primary_busy = false;
            }
        }
    }

    /// Ends the threads once their current jobs end; queued jobs are dropped.
    fn close(&self) {
        let dropped = {
            let mut queue = self.lock();
            queue.closed = true;
            std::mem::take(&mut queue.jobs)
        };
        drop(dropped);
        self.work.notify_all();
    }
}

/// Renders one resource on its controller's render thread within its limits.
async fn render(
    index: usize,
    member: Arc<Prepared>,
    view: View,
    threads: Arc<Threads>,
    running: Arc<AtomicBool>,
) -> Rendered {
    let limits = member.limits;
    let bounds = RenderBounds {
        max_size: limits.max_size,
        cancel: Arc::default(),
    };
    let _stop = StopOnDrop(Arc::clone(&bounds.cancel));
    running.store(true, Ordering::Release);
    // Marks the render ended when the job is done or dropped unrun.
    let running = Running(running);
    let thread_bounds = bounds.clone();
    let thread_member = Arc::clone(&member);
    // The render thread wakes this task directly: one thread wake-up each way is all a
    // render costs beyond its own work.
    let (started, on_thread) = tokio::sync::oneshot::channel();
    let (reply, answer) = tokio::sync::oneshot::channel();
    let hold = hold_clock();
    let job: Job = Box::new(move |thread| {
        let running = running;
        let _hold = hold;
        let began = std::time::Instant::now();
        // Read only when the render is slow, so it wakes no one in the common case.
        let _ = started.send((thread, began));
        let secret = thread_member.resource.secret;
        // Dropped after the answer: see `Renders::round`.
        let listings = Arc::clone(&view.shared);
        let rendered = thread_member
            .renderer
            .render_bounded(view, &thread_bounds)
            .map(|text| {
                let md5 = (!secret).then(|| md5_hex(text.as_bytes()));
                (text, md5)
            });
        // Marked ended before the answer goes: the round that the answer lets start next must
        // not find this render still running.
        drop(running);
        // The caller stopped waiting only if it gave up on the render.
        let _ = reply.send((rendered, began.elapsed()));
        drop(listings);
    });
    let resource = &member.resource;
    let failure = |message: String, may_pass: bool| RenderFailure {
        message: format!("{}: {message}", resource.file.display()),
        may_pass,
    };
    if let Err(e) = threads.queue(job) {
        return Rendered {
            index,
            content: Err(NotRendered::Failed(failure(
                format!("cannot start a render thread: {e}"),
                true,
            ))),
            md5: None,
            time: Duration::ZERO,
        };
    }
    let finished = answer_in_time(answer, on_thread, &threads, limits).await;
    let mut time = Duration::ZERO;
    let content = match finished {
        Some(Ok(Ok((rendered, took)))) => {
            time = took;
            rendered.map_err(|e| failure(e.to_string(), e.may_pass))
        }
        Some(Ok(Err(_))) => Err(failure(
            format!("{}: {}", resource.src.display(), crate::template::PANICKED),
            false,
        )),
        Some(Err(_)) => Err(failure(
            format!(
                "{}: rendering took longer than {}, the limit (`render_timeout`); the \
                 destination is left as it is",
                resource.src.display(),
                humantime::format_duration(limits.timeout)
            ),
            false,
        )),
        None => Err(failure(
            format!(
                "{}: not rendered: a slow render held the render thread and no other could \
                 be started; the destination is left as it is",
                resource.src.display(),
            ),
            true,
        )),
    };
    let (content, md5) = match content {
        Ok((text, md5)) => (Ok(Arc::new(text)), md5),
        Err(failure) => (Err(NotRendered::Failed(failure)), None),
    };
    Rendered {
        index,
        content,
        md5,
        time,
    }
}

/// A render's text and md5, or its error, and how long it took.
type Reply = (Result<(String, Option<String>), TemplateError>, Duration);

/// What a render's caller hears: the reply, or an error if its job dropped it (it panicked).
type Answer = Result<Reply, tokio::sync::oneshot::error::RecvError>;

/// Waits for the `answer` of a queued render within its limits: `Err` past its time limit,
/// `None` if the job was dropped unrun (no thread could take over from a slow render). The
/// time limit and the grace after which the renders queued behind it move to a new thread
/// count from the moment the render started, which `started` gives; it is read only when the
/// answer is slow to come, or missing.
async fn answer_in_time(
    answer: tokio::sync::oneshot::Receiver<Reply>,
    mut started: tokio::sync::oneshot::Receiver<(u64, std::time::Instant)>,
    threads: &Arc<Threads>,
    limits: RenderLimits,
) -> Option<Result<Answer, tokio::time::error::Elapsed>> {
    let grace = ROUND_GRACE.min(limits.timeout);
    let mut answer = std::pin::pin!(answer);
    tokio::select! {
        answered = &mut answer => return heard(answered, &mut started),
        () = tokio::time::sleep(grace) => {}
    }
    // Not answered within its grace of being queued: it waits behind other renders, or it is
    // slow.
    let (thread, began) = tokio::select! {
        answered = &mut answer => return heard(answered, &mut started),
        start = &mut started => start.ok()?,
    };
    if let Some(left) = grace.checked_sub(began.elapsed()) {
        tokio::select! {
            answered = &mut answer => return Some(Ok(answered)),
            () = tokio::time::sleep(left) => {}
        }
    }
    // A slow render no longer holds back the renders queued after it.
    threads.replace(thread);
    let left = limits.timeout.saturating_sub(began.elapsed());
    Some(tokio::time::timeout(left, answer).await)
}

/// What an `answered` render comes to: `None` when its job was dropped before it started
/// (it sent no start), else the answer (an error if the job panicked).
fn heard(
    answered: Answer,
    started: &mut tokio::sync::oneshot::Receiver<(u64, std::time::Instant)>,
) -> Option<Result<Answer, tokio::time::error::Elapsed>> {
    if answered.is_err() && started.try_recv().is_err() {
        return None;
    }
    Some(Ok(answered))
}

/// Keeps tokio's paused clock (controller tests) standing still while a render runs, as it
/// does while any blocking task runs: a blocking task that lasts until this is dropped with
/// the render. Without it the clock would jump past [`ROUND_GRACE`] the moment the runtime
/// waits for a render, and every render would look slow. Outside tests the clock is real and
/// this holds nothing.
struct ClockHold {
    #[cfg(test)]
    _blocking_task: std::sync::mpsc::Sender<()>,
}

#[cfg(test)]
fn hold_clock() -> ClockHold {
    let (hold, held) = std::sync::mpsc::channel::<()>();
    // Ends when the render drops `hold`.
    drop(tokio::task::spawn_blocking(move || held.recv()));
    ClockHold {
        _blocking_task: hold,
    }
}

#[cfg(not(test))]
fn hold_clock() -> ClockHold {
    ClockHold {}
}
