//! Rendering off the runtime thread, within limits.
//!
//! Every render runs on a render thread of its controller, so the runtime thread that serves
//! signals, health, the watches and the other resources never waits for a template. A render
//! has a time limit and an output limit: past the time limit the resource fails, the render
//! is told to stop (it stops at its next write or function call) and its result, if it ever
//! comes, is dropped; until its thread has ended the resource is not rendered again, so a
//! runaway template holds one thread at most. A controller renders one template at a time
//! (renders allocate heavily, and two on one allocator mostly wait for each other); a render
//! still running after [`ROUND_GRACE`] lets the next one start beside it.
//!
//! A resource whose `min_keys` the snapshot does not meet is not rendered at all, nor is one
//! that sees a key whose value is not UTF-8: it fails naming the key, as no template can be
//! given that value unchanged, and dropping or mending it would write a configuration the
//! store does not hold.
//!
//! A round renders its resources concurrently and is committed as one batch. Renders still
//! running [`ROUND_GRACE`] after the round began do not hold the others back: the round
//! commits without them (and without the other templates of their files), and they are
//! committed as a batch of their own when they end.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use tokio::sync::Semaphore;

use super::{Prepared, Shutdown, now, sleep_until};
use crate::reconcile::md5_hex;
use crate::resource::Resource;
use crate::store::Snapshot;
use crate::template::{RenderBounds, SharedResults, View};

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
fn too_few_keys(resource: &Resource, snapshot: &Snapshot) -> Option<TooFewKeys> {
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
    permits: Arc<Semaphore>,
    /// The thread that renders, while it is idle.
    worker: Arc<Mutex<Option<Worker>>>,
    /// For each resource: a render thread of it is still running.
    running: Vec<Arc<AtomicBool>>,
    /// Renders that outlived their round, as batches to commit when they end.
    late: FuturesUnordered<BoxFuture<'static, Vec<Rendered>>>,
    /// Resources in `late`.
    late_indexes: BTreeSet<usize>,
    /// Resources asked for while they were in `late`: rendered again once it ends.
    deferred: BTreeSet<usize>,
}

impl Renders {
    /// Render state for `resources` resources.
    pub(crate) fn new(resources: usize) -> Renders {
        Renders {
            permits: Arc::new(Semaphore::new(1)),
            worker: Arc::default(),
            running: (0..resources).map(|_| Arc::default()).collect(),
            late: FuturesUnordered::new(),
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
                Arc::clone(&self.permits),
                Arc::clone(&self.worker),
                Arc::clone(&self.running[index]),
            ));
        }
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
        self.late.push(Box::pin(async move {
            let mut batch = held;
            while let Some(rendered) = pending.next().await {
                batch.push(rendered);
            }
            batch
        }));
        Some(now_done)
    }

    /// The next late batch, once its renders have ended; never while there is none.
    pub(crate) async fn next_late(&mut self) -> Vec<Rendered> {
        if self.late.is_empty() {
            return std::future::pending().await;
        }
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

/// Marks a resource's render thread as ended when the thread ends, however it ends.
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

/// A job for a render thread.
type Job = Box<dyn FnOnce() + Send>;

/// A thread that runs renders one after another. One long-lived thread per controller keeps
/// the memory a render touches (its stack, the allocator's per-thread cache) in one place;
/// a pool thread per render left a little of it behind on every thread the pool kept.
struct Worker {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl Worker {
    fn spawn() -> std::io::Result<Worker> {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("reconfd-render".to_string())
            .spawn(move || {
                // Ends when its controller lets it go (the sender is dropped).
                while let Ok(job) = queue.recv() {
                    // A render that panics drops its reply, which its caller reports; the
                    // thread goes on with the next one.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            })?;
        Ok(Worker { jobs })
    }

    /// Hands `job` to the idle worker in `slot`, or to a new one when there is none or it
    /// has ended. Returns the worker, now busy with the job.
    fn run(slot: &Mutex<Option<Worker>>, job: Job) -> std::io::Result<Worker> {
        let idle = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        let job = match idle {
            Some(worker) => match worker.jobs.send(job) {
                Ok(()) => return Ok(worker),
                Err(returned) => returned.0,
            },
            None => job,
        };
        let worker = Worker::spawn()?;
        // A new thread's queue is open until the worker is dropped.
        let _ = worker.jobs.send(job);
        Ok(worker)
    }

    /// Puts the worker back as the controller's idle one, unless another took its place.
    fn release(self, slot: &Mutex<Option<Worker>>) {
        slot.lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(self);
    }
}

/// Renders one resource on its controller's render thread within its limits.
async fn render(
    index: usize,
    member: Arc<Prepared>,
    view: View,
    permits: Arc<Semaphore>,
    worker: Arc<Mutex<Option<Worker>>>,
    running: Arc<AtomicBool>,
) -> Rendered {
    // The semaphore is never closed.
    let permit = permits.acquire_owned().await.ok();
    let limits = member.limits;
    let bounds = RenderBounds {
        max_size: limits.max_size,
        cancel: Arc::default(),
    };
    let _stop = StopOnDrop(Arc::clone(&bounds.cancel));
    let started = now();
    running.store(true, Ordering::Release);
    let thread_bounds = bounds.clone();
    let thread_member = Arc::clone(&member);
    // The render thread wakes this task directly: one thread wake-up each way is all a
    // render costs beyond its own work.
    let (reply, answer) = tokio::sync::oneshot::channel();
    let hold = hold_clock();
    let job: Job = Box::new(move || {
        let running = Running(running);
        let _hold = hold;
        let secret = thread_member.resource.secret;
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
        let _ = reply.send(rendered);
    });
    let resource = &member.resource;
    let failure = |message: String, may_pass: bool| RenderFailure {
        message: format!("{}: {message}", resource.file.display()),
        may_pass,
    };
    let busy = match Worker::run(&worker, job) {
        Ok(busy) => busy,
        Err(e) => {
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
    };
    let deadline = tokio::time::Instant::now() + limits.timeout;
    let mut answer = std::pin::pin!(answer);
    let finished = tokio::select! {
        finished = &mut answer => Ok(finished),
        () = tokio::time::sleep(ROUND_GRACE.min(limits.timeout)) => {
            // A slow render no longer holds back the next one, which gets a thread of its own.
            drop(permit);
            tokio::time::timeout_at(deadline, answer).await
        }
    };
    if finished.is_ok() {
        busy.release(&worker);
    }
    let content = match finished {
        Ok(Ok(Ok(rendered))) => Ok(rendered),
        Ok(Ok(Err(e))) => Err(failure(e.to_string(), e.may_pass)),
        Ok(Err(_)) => Err(failure(
            format!(
                "{}: rendering failed unexpectedly (it panicked); please report this",
                resource.src.display(),
            ),
            false,
        )),
        Err(_) => Err(failure(
            format!(
                "{}: rendering took longer than {}, the limit (`render_timeout`); the \
                 destination is left as it is",
                resource.src.display(),
                humantime::format_duration(limits.timeout)
            ),
            false,
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
        time: now() - started,
    }
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
