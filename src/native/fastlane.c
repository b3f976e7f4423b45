/*
 * vmhealth_fastlane: repeats settled network probes off the Python interpreter.
 *
 * An optional part of vmhealth, built and packaged on its own (src/native/setup.py,
 * python3-vmhealth-fastlane): vmhealth.monitor.native_lane uses it when it is
 * installed and of the same version, else every probe runs in Python.
 *
 * Why: at 2,000 probes a second (1,000 domains, an HTTP and a TCP probe each at
 * periodSeconds 1) the Python engine's own bookkeeping (schedule, run objects,
 * results, metrics) costs more than the connections themselves (docs/probes.md).
 * Most of those probes are the same success over and over. The Python prober keeps
 * every decision; once a probe has settled (healthy, its success threshold met) it
 * hands the probe's last successful exchange to this engine as a "lane", which
 * repeats it every period in a thread of its own, without the GIL:
 *
 *   - the same address and port, the same request bytes (none for tcpSocket);
 *   - a repetition that ends the same way (connected; or an HTTP answer with the
 *     same status, read to its end, the end of the stream, or 10 KiB of body, as
 *     the Python handler reads it) is counted here, silently: a count, a duration
 *     histogram with the metrics' buckets, the last start time and duration;
 *   - anything else (refused, reset, another status, an answer llhttp rejects, an
 *     answer bigger than the lane reads, no socket) ends the lane and hands the tick
 *     back to Python, which runs that probe again its own way (messages, redirects,
 *     thresholds, suppression, actions) and may hand it over again once settled;
 *     no answer in time is handed back as a timeout, which Python counts as the
 *     failure it is, without probing again; so are the guest's cached addresses
 *     going stale (Python looks them up again).
 *
 * Python reads the silent counts when it needs them (status, metrics, handback),
 * so a settled host costs the interpreter nothing per probe.
 *
 * Guests are untrusted: whatever one sends costs a bounded amount of this thread's
 * time and never holds up Python.
 *   - Bytes: the head (status line and headers) is read to at most HEAD_CAP_BYTES,
 *     what follows it (body, chunk sizes and extensions, trailers) to at most
 *     AFTER_HEAD_CAP_BYTES, of which body BODY_CAP_BYTES; past a cap the probe goes
 *     back to Python, whose handler has the same limits and says what failed.
 *   - Turns: a socket is read at most READ_BUDGET_BYTES per loop turn. The sockets are
 *     edge-triggered, so one with more to read is kept on a ready list and served
 *     again on the next turn (which then does not sleep).
 *   - Time: the deadline is checked inside the read loop, not only by the timer heap.
 *
 * Threading. One engine thread runs an epoll loop and a timer heap; it never touches
 * Python objects and never takes the GIL. What the engine thread and Python share
 * (the lane table, the queues between them, the reports, the silent counts) is
 * guarded by one mutex, which is never held while a socket is read or an answer
 * parsed, and every Python-facing call waits for it with the GIL released and builds
 * Python objects only after copying its data out. Everything else of a lane (its
 * socket, parser, timers) belongs to the engine thread alone: Python adds lanes
 * through an incoming queue and drops them through a dropped queue, which the engine
 * takes at the start of each turn, and only the engine thread frees a lane (at the
 * end of a turn, so no pointer to it is left in the turn's epoll events or ready
 * list). Handbacks are queued and announced on an eventfd that the asyncio loop
 * watches.
 *
 * Allocation never fails halfway: an offload reserves the report its lane may end
 * with, the engine grows its timer heap when it adopts a lane (a lane it cannot
 * place is handed straight back), and a Python call that cannot build its answer
 * puts what it took back.
 *
 * Every wait is bounded: epoll_wait at most one second at a time, every attempt by
 * its deadline, close() by a join that the thread answers within one loop turn.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "llhttp.h"

/* vmhealth's version this engine was built for (src/native/setup.py defines it from
   src/vmhealth/__init__.py); native_lane.py uses no engine of another version. */
#ifndef VMHEALTH_VERSION
#error "VMHEALTH_VERSION is not defined: build with src/native/setup.py"
#endif

#define BODY_CAP_BYTES (10 * 1024)     /* kubelet reads at most 10 KiB of a body */
/* The Python handler's limits (probes/http.py MAX_HEAD_BYTES, MAX_AFTER_HEAD_BYTES): an
   answer the lane reads whole is one the handler reads whole too. */
#define HEAD_CAP_BYTES (64 * 1024)        /* status line and headers (real ones: < 1 KiB) */
#define AFTER_HEAD_CAP_BYTES (64 * 1024)  /* body, chunk framing, trailers: room for 10 KiB
                                             of body in 1-byte chunks */
#define READ_BUDGET_BYTES (16 * 1024)  /* read from one socket per loop turn */
#define GRAIN_SECONDS 0.005            /* ticks are batched on a 5 ms grid, as in Python */
#define MAX_WAIT_MS 1000               /* epoll_wait never waits longer than this */
#define MAX_BOUNDS 32
#define MAX_EVENTS 256

/* Why a lane ended (the tick handed back to Python). */
enum handback_reason {
    REASON_DIFFERENT = 1,  /* the answer was not the settled success (or was too big) */
    REASON_TIMEOUT = 2,    /* no answer within timeoutSeconds */
    REASON_STALE = 3,      /* the guest's cached addresses expired: Python looks again */
    REASON_HOST = 4,       /* this host could not make a socket (or room for the lane) */
};

/* IDLE between attempts; ENDED once handed back or dropped (freed at the turn's end). */
enum phase { IDLE, CONNECTING, READING, ENDED };

/* Silent successes not yet read by Python. */
typedef struct {
    uint64_t silent;
    double duration_sum, last_started_wall, last_duration;
    uint64_t buckets[MAX_BOUNDS + 1];
} counts_t;

typedef struct lane lane_t;
struct lane {
    /* -- shared: guarded by the engine's mutex -- */
    uint64_t id;            /* generation << 24 | slot, plus 1 << 48 */
    int recalled;           /* Python dropped it: no report; the dropped queue frees it */
    counts_t counts;
    lane_t *incoming_next;  /* the queue of lanes Python added */
    lane_t *dropped_next;   /* the queue of lanes Python recalled */
    /* -- the engine thread's alone (set by Python before the lane is queued) -- */
    struct sockaddr_storage addr;
    socklen_t addrlen;
    char *request;          /* NULL: tcpSocket (connect, then reset) */
    size_t request_len;
    int expect_status;
    double timeout, period, tick, valid_until;
    enum phase phase;       /* the attempt in flight: */
    int fd;
    size_t sent;
    size_t fed;             /* bytes given to llhttp */
    size_t head_len;        /* of which the head (known once the headers are complete) */
    size_t body;            /* of which body */
    int headers_done;
    int interim;  /* inside an interim (1xx but 101) answer, which the final one follows */
    int verdict;            /* set by the llhttp callbacks: 0 none, 1 same, -1 different */
    double started_mono, started_wall, deadline;
    llhttp_t parser;
    size_t heap_index;      /* timer heap; SIZE_MAX: not in the heap */
    double due;
    int in_ready;           /* on the ready list (more to read than one turn's budget) */
    int more;               /* its last read spent the budget */
    uint64_t served_turn;   /* the turn it was last read in */
    lane_t *ready_next;
    lane_t *grave_next;     /* freed at the end of the turn */
};

typedef struct {
    uint64_t id;
    int reason;
    double tick, started_wall, duration;
    counts_t counts;        /* the lane's silent successes travel with its report */
} report_t;

typedef struct {
    PyObject_HEAD
    pthread_mutex_t mu;
    int mutex_ready;
    int init_called;
    int closed;             /* close() began (read and written with the GIL) */
    pthread_t thread;
    int thread_started;
    /* immutable once the thread runs */
    double bounds[MAX_BOUNDS];
    int nbounds;
    llhttp_settings_t settings;
    int epfd, wake_fd, notify_fd;
    /* -- shared: guarded by mu -- */
    int stopping;
    int freed;              /* everything below is gone: every call says "closed" */
    lane_t **slots;
    size_t nslots;
    uint32_t *generations;
    size_t *free_slots;
    size_t nfree;
    size_t live;            /* lanes in the table (neither handed back nor recalled) */
    lane_t *incoming, *dropped;
    report_t *reports;
    size_t nreports, reports_cap;
    size_t reports_reserved;  /* live + nreports: a handback never needs to allocate */
    int taking_reports;
    /* -- the engine thread's alone -- */
    lane_t **heap;
    size_t heap_len, heap_cap;
    size_t adopted;         /* lanes the engine holds: the heap has room for all */
    lane_t *ready, *graveyard;
    uint64_t turn;
} Engine;

/* -- clocks ------------------------------------------------------------------ */

static double now_mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);  /* time.monotonic() and asyncio's loop.time() */
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double now_wall(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* -- timer heap (min-heap on lane->due; the engine thread's) ----------------------- */

static void heap_swap(Engine *e, size_t a, size_t b) {
    lane_t *t = e->heap[a];
    e->heap[a] = e->heap[b];
    e->heap[b] = t;
    e->heap[a]->heap_index = a;
    e->heap[b]->heap_index = b;
}

static void heap_up(Engine *e, size_t i) {
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (e->heap[parent]->due <= e->heap[i]->due)
            break;
        heap_swap(e, parent, i);
        i = parent;
    }
}

static void heap_down(Engine *e, size_t i) {
    for (;;) {
        size_t left = 2 * i + 1, right = left + 1, least = i;
        if (left < e->heap_len && e->heap[left]->due < e->heap[least]->due)
            least = left;
        if (right < e->heap_len && e->heap[right]->due < e->heap[least]->due)
            least = right;
        if (least == i)
            return;
        heap_swap(e, i, least);
        i = least;
    }
}

static void heap_remove(Engine *e, lane_t *lane) {
    size_t i = lane->heap_index;
    if (i == SIZE_MAX)
        return;
    lane->heap_index = SIZE_MAX;
    e->heap_len--;
    if (i == e->heap_len)
        return;
    e->heap[i] = e->heap[e->heap_len];
    e->heap[i]->heap_index = i;
    heap_up(e, i);
    heap_down(e, e->heap[i]->heap_index);
}

/* Make room for every adopted lane, so heap_set never allocates. 0, or -1 (ENOMEM). */
static int heap_reserve(Engine *e, size_t lanes) {
    if (lanes <= e->heap_cap)
        return 0;
    size_t cap = e->heap_cap ? e->heap_cap : 256;
    while (cap < lanes)
        cap *= 2;
    lane_t **grown = realloc(e->heap, cap * sizeof *grown);
    if (grown == NULL)
        return -1;
    e->heap = grown;
    e->heap_cap = cap;
    return 0;
}

/* Put `lane` in the heap at `due`, or move it there. Room was reserved on adoption. */
static void heap_set(Engine *e, lane_t *lane, double due) {
    if (lane->heap_index != SIZE_MAX) {
        double before = lane->due;
        lane->due = due;
        if (due < before)
            heap_up(e, lane->heap_index);
        else
            heap_down(e, lane->heap_index);
        return;
    }
    lane->due = due;
    lane->heap_index = e->heap_len;
    e->heap[e->heap_len++] = lane;
    heap_up(e, lane->heap_index);
}

/* -- lanes --------------------------------------------------------------------- */

/* With the mutex held. */
static lane_t *lane_by_id(Engine *e, uint64_t id) {
    size_t slot = (size_t)(id & 0xFFFFFF);
    if (slot >= e->nslots || e->slots[slot] == NULL || e->slots[slot]->id != id)
        return NULL;
    return e->slots[slot];
}

/* With the mutex held: the lane leaves the table (Python can no longer find it). */
static void lane_unlink(Engine *e, lane_t *lane) {
    size_t slot = (size_t)(lane->id & 0xFFFFFF);
    e->slots[slot] = NULL;
    e->free_slots[e->nfree++] = slot;
    e->live--;
}

static void lane_close_socket(Engine *e, lane_t *lane) {
    if (lane->fd >= 0) {
        /* Deregister first: a copy of the descriptor (a fork in another thread, before
           its exec) would keep the registration alive after close(). */
        epoll_ctl(e->epfd, EPOLL_CTL_DEL, lane->fd, NULL);
        /* SO_LINGER 0 was set: close() sends a reset and leaves no TIME_WAIT behind. */
        close(lane->fd);
        lane->fd = -1;
    }
    if (lane->phase != ENDED)
        lane->phase = IDLE;
}

static void lane_destroy(lane_t *lane) {
    if (lane->fd >= 0)
        close(lane->fd);
    free(lane->request);
    free(lane);
}

/* The engine is done with `lane`: it is freed at the end of this turn. */
static void lane_bury(Engine *e, lane_t *lane) {
    lane_close_socket(e, lane);
    heap_remove(e, lane);
    lane->phase = ENDED;
    lane->grave_next = e->graveyard;
    e->graveyard = lane;
}

static void signal_fd(int fd) {
    uint64_t one = 1;
    ssize_t written = write(fd, &one, sizeof one);
    (void)written;  /* EAGAIN: the counter is already non-zero, the reader will wake */
}

/* End `lane`: queue its tick for Python. The engine thread, without the mutex. */
static void hand_back(Engine *e, lane_t *lane, int reason, double now) {
    int attempted = lane->phase == CONNECTING || lane->phase == READING;
    double started_wall = attempted ? lane->started_wall : 0.0;
    double duration = attempted ? now - lane->started_mono : 0.0;
    int first = 0, mine = 0;
    lane_close_socket(e, lane);
    heap_remove(e, lane);
    lane->phase = ENDED;
    pthread_mutex_lock(&e->mu);
    if (!lane->recalled) {
        /* Room was reserved when the lane was offloaded (reports_reserved). */
        report_t *report = &e->reports[e->nreports++];
        report->id = lane->id;
        report->reason = reason;
        report->tick = lane->tick;
        report->started_wall = started_wall;
        report->duration = duration;
        report->counts = lane->counts;
        lane_unlink(e, lane);
        first = e->nreports == 1;
        mine = 1;
    }
    pthread_mutex_unlock(&e->mu);
    if (mine) {
        lane->grave_next = e->graveyard;
        e->graveyard = lane;
    }
    /* else: recalled meanwhile; the dropped queue brings it to the graveyard. */
    if (first)
        signal_fd(e->notify_fd);
}

static void record_success(Engine *e, lane_t *lane, double now) {
    double seconds = now - lane->started_mono;
    int i = 0;
    while (i < e->nbounds && e->bounds[i] < seconds)  /* bisect_left, as metrics.py */
        i++;
    pthread_mutex_lock(&e->mu);
    lane->counts.buckets[i]++;
    lane->counts.silent++;
    lane->counts.duration_sum += seconds;
    lane->counts.last_started_wall = lane->started_wall;
    lane->counts.last_duration = seconds;
    pthread_mutex_unlock(&e->mu);
    lane_close_socket(e, lane);
    /* The next tick; ticks missed because this one ran long are skipped, not run late. */
    double tick = lane->tick + lane->period;
    if (tick < now)
        tick += (floor((now - tick) / lane->period) + 1) * lane->period;
    lane->tick = tick;
    heap_set(e, lane, tick);
}

/* -- llhttp callbacks: decide as the Python handler would ------------------------- */

static int on_headers_complete(llhttp_t *parser) {
    lane_t *lane = parser->data;
    if (parser->status_code >= 100 && parser->status_code < 200 && parser->status_code != 101) {
        /* Interim (100 Continue, 103 Early Hints): skipped, as Go's client (kubelet's)
           and the Python handler skip it; the final answer follows, its bytes counted
           against the head's cap like the interim's. 101 is final, another status. */
        lane->interim = 1;
        return HPE_OK;
    }
    lane->headers_done = 1;
    if (parser->status_code != lane->expect_status)
        lane->verdict = -1;
    return HPE_PAUSED;  /* always: where it pauses is where the head ends (parse()) */
}

static int on_body(llhttp_t *parser, const char *at, size_t length) {
    lane_t *lane = parser->data;
    (void)at;
    lane->body += length;
    if (lane->body >= BODY_CAP_BYTES) {
        lane->verdict = 1;  /* read no more than 10 KiB */
        return HPE_PAUSED;
    }
    return HPE_OK;
}

static int on_message_complete(llhttp_t *parser) {
    lane_t *lane = parser->data;
    if (lane->interim) {
        lane->interim = 0;  /* the end of an interim answer: read on to the final one */
        return HPE_OK;
    }
    lane->verdict = 1;
    return HPE_PAUSED;
}

/* -- one attempt (the engine thread) --------------------------------------------- */

static void start_attempt(Engine *e, lane_t *lane, double now) {
    static const struct linger reset_on_close = {1, 0};
    int fd = socket(lane->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        hand_back(e, lane, REASON_HOST, now);
        return;
    }
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset_on_close, sizeof reset_on_close);
    lane->fd = fd;
    lane->phase = CONNECTING;
    lane->started_mono = now;
    lane->started_wall = now_wall();
    lane->deadline = now + lane->timeout;
    lane->sent = lane->fed = lane->head_len = lane->body = 0;
    lane->headers_done = lane->verdict = lane->interim = 0;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                             .data.ptr = lane};
    if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        hand_back(e, lane, REASON_HOST, now);
        return;
    }
    if (connect(fd, (struct sockaddr *)&lane->addr, lane->addrlen) < 0
            && errno != EINPROGRESS) {
        hand_back(e, lane, REASON_DIFFERENT, now);  /* refused, unreachable: Python says which */
        return;
    }
    heap_set(e, lane, lane->deadline);
    /* Edge-triggered: the connection's completion arrives as an event, even when
       connect() finished at once. */
}

static void ready_push(Engine *e, lane_t *lane) {
    lane->ready_next = e->ready;
    e->ready = lane;
    lane->in_ready = 1;
}

/* How many more bytes llhttp may see before a cap is reached: the head's until the
   headers are complete, then the one on what follows them. */
static size_t allowance(const lane_t *lane) {
    if (!lane->headers_done)
        return HEAD_CAP_BYTES - lane->fed;
    size_t after_head = lane->fed - lane->head_len;
    return after_head >= AFTER_HEAD_CAP_BYTES ? 0 : AFTER_HEAD_CAP_BYTES - after_head;
}

/* Give `length` bytes to llhttp. 1 if that ended the attempt (counted or handed back). */
static int parse(Engine *e, lane_t *lane, const char *data, size_t length) {
    size_t before = lane->fed;
    lane->fed += length;
    llhttp_errno_t err = llhttp_execute(&lane->parser, data, length);
    if (err == HPE_PAUSED && lane->verdict == 0 && lane->headers_done && lane->head_len == 0) {
        /* Paused at the end of the head (on_headers_complete): go on with the rest. */
        const char *at = llhttp_get_error_pos(&lane->parser);
        size_t used = (size_t)(at - data);
        lane->head_len = before + used;
        llhttp_resume(&lane->parser);
        err = llhttp_execute(&lane->parser, at, length - used);
    }
    if (lane->verdict != 0 || err == HPE_PAUSED_UPGRADE) {
        if (lane->verdict < 0)
            hand_back(e, lane, REASON_DIFFERENT, now_mono());
        else
            record_success(e, lane, now_mono());
        return 1;
    }
    if (err != HPE_OK) {
        hand_back(e, lane, REASON_DIFFERENT, now_mono());  /* llhttp rejected the answer */
        return 1;
    }
    return 0;
}

/* End of stream: it ends an EOF-delimited body, if the headers are in (llhttp_finish
   then calls on_message_complete, which pauses). */
static void end_of_stream(Engine *e, lane_t *lane) {
    llhttp_errno_t err = llhttp_finish(&lane->parser);
    double now = now_mono();
    if (lane->verdict > 0 || (err == HPE_OK && lane->headers_done && lane->verdict == 0))
        record_success(e, lane, now);
    else
        hand_back(e, lane, REASON_DIFFERENT, now);
}

/* Read what the guest sent, at most READ_BUDGET_BYTES this turn. */
static void read_answer(Engine *e, lane_t *lane) {
    char buffer[READ_BUDGET_BYTES];
    size_t budget = READ_BUDGET_BYTES;
    lane->served_turn = e->turn;
    lane->more = 0;
    while (budget > 0) {
        double now = now_mono();
        if (now >= lane->deadline) {
            hand_back(e, lane, REASON_TIMEOUT, now);
            return;
        }
        size_t want = allowance(lane);
        if (want == 0) {
            /* A cap reached with no verdict: too big for the lane; Python's handler
               reads it with its own limits. */
            hand_back(e, lane, REASON_DIFFERENT, now);
            return;
        }
        ssize_t got = recv(lane->fd, buffer, want < budget ? want : budget, 0);
        if (got > 0) {
            budget -= (size_t)got;
            if (parse(e, lane, buffer, (size_t)got))
                return;
            continue;
        }
        if (got == 0) {
            end_of_stream(e, lane);
            return;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return;  /* drained: the next edge brings more */
        if (errno == EINTR)
            continue;
        hand_back(e, lane, REASON_DIFFERENT, now);  /* reset mid-answer */
        return;
    }
    /* Budget spent with more perhaps waiting: no new edge will say so. */
    lane->more = 1;
    if (!lane->in_ready)
        ready_push(e, lane);
}

static void send_request(Engine *e, lane_t *lane) {
    while (lane->sent < lane->request_len) {
        ssize_t put = send(lane->fd, lane->request + lane->sent, lane->request_len - lane->sent,
                           MSG_NOSIGNAL);
        if (put > 0) {
            lane->sent += (size_t)put;
            continue;
        }
        if (put < 0 && errno == EINTR)
            continue;
        if (put < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;  /* the next EPOLLOUT edge continues */
        hand_back(e, lane, REASON_DIFFERENT, now_mono());
        return;
    }
    if (lane->phase == CONNECTING) {
        lane->phase = READING;
        llhttp_init(&lane->parser, HTTP_RESPONSE, &e->settings);
        lane->parser.data = lane;
    }
}

static void on_io(Engine *e, lane_t *lane, uint32_t events) {
    if (lane->phase == CONNECTING) {
        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
            return;
        int error = 0;
        socklen_t len = sizeof error;
        if (getsockopt(lane->fd, SOL_SOCKET, SO_ERROR, &error, &len) < 0 || error != 0) {
            hand_back(e, lane, REASON_DIFFERENT, now_mono());
            return;
        }
        if (lane->request == NULL) {
            record_success(e, lane, now_mono());  /* tcpSocket: connected is the whole answer */
            return;
        }
        send_request(e, lane);  /* READING once the whole request is out */
        if (lane->phase != READING)
            return;
    }
    if (lane->phase == READING && (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
        read_answer(e, lane);
}

/* -- the engine thread ------------------------------------------------------------- */

static void run_due(Engine *e, double now) {
    while (e->heap_len > 0 && e->heap[0]->due <= now) {
        lane_t *lane = e->heap[0];
        heap_remove(e, lane);
        if (lane->phase != IDLE) {
            hand_back(e, lane, REASON_TIMEOUT, now);
            continue;
        }
        if (now >= lane->valid_until) {
            hand_back(e, lane, REASON_STALE, now);
            continue;
        }
        start_attempt(e, lane, now);
    }
}

static int wait_ms(Engine *e, double now) {
    if (e->ready != NULL)
        return 0;  /* sockets with more to read: serve them now */
    if (e->heap_len == 0)
        return MAX_WAIT_MS;
    double due = e->heap[0]->due;
    /* Round up to the grid, so the ticks of many lanes are run by one wake-up. */
    double slot = ceil(due / GRAIN_SECONDS) * GRAIN_SECONDS;
    double ms = ceil((slot - now) * 1000.0);
    if (ms < 0)
        return 0;
    return ms > MAX_WAIT_MS ? MAX_WAIT_MS : (int)ms;
}

/* Place a lane Python added; one the heap has no room for goes straight back. */
static void adopt(Engine *e, lane_t *lane) {
    e->adopted++;
    if (heap_reserve(e, e->adopted) < 0) {
        hand_back(e, lane, REASON_HOST, now_mono());
        return;
    }
    heap_set(e, lane, lane->tick);
}

/* Take what Python queued since the last turn. 0, or -1 when the engine is to stop
   (what is still queued is freed by engine_shutdown). */
static int take_queues(Engine *e) {
    pthread_mutex_lock(&e->mu);
    if (e->stopping) {
        pthread_mutex_unlock(&e->mu);
        return -1;
    }
    lane_t *incoming = e->incoming, *dropped = e->dropped;
    e->incoming = e->dropped = NULL;
    pthread_mutex_unlock(&e->mu);
    /* Python no longer touches these links once the queues are taken. */
    while (incoming != NULL) {
        lane_t *lane = incoming;
        incoming = lane->incoming_next;
        adopt(e, lane);
    }
    while (dropped != NULL) {
        lane_t *lane = dropped;
        dropped = lane->dropped_next;
        lane_bury(e, lane);
    }
    return 0;
}

/* The sockets left with more to read last turn, unless an event served them already. */
static void serve_pending(Engine *e, lane_t *pending) {
    while (pending != NULL) {
        lane_t *lane = pending;
        pending = lane->ready_next;
        lane->in_ready = 0;
        if (lane->phase != READING)
            continue;  /* ended, or timed out by run_due */
        if (lane->served_turn != e->turn)
            read_answer(e, lane);
        else if (lane->more)
            ready_push(e, lane);
    }
}

static void free_graveyard(Engine *e) {
    while (e->graveyard != NULL) {
        lane_t *lane = e->graveyard;
        e->graveyard = lane->grave_next;
        lane_destroy(lane);
        e->adopted--;
    }
}

static void *engine_main(void *arg) {
    Engine *e = arg;
    struct epoll_event events[MAX_EVENTS];
    while (take_queues(e) == 0) {
        double now = now_mono();
        run_due(e, now);
        int n = epoll_wait(e->epfd, events, MAX_EVENTS, wait_ms(e, now));
        e->turn++;
        lane_t *pending = e->ready;  /* stays linked (in_ready) until served below */
        e->ready = NULL;
        for (int i = 0; i < n; i++) {
            lane_t *lane = events[i].data.ptr;
            if (lane == NULL) {
                uint64_t count;
                ssize_t got = read(e->wake_fd, &count, sizeof count);
                (void)got;
                continue;
            }
            if (lane->phase == CONNECTING || lane->phase == READING)
                on_io(e, lane, events[i].events);
        }
        serve_pending(e, pending);
        /* Nothing of this turn points at the dead any more. */
        free_graveyard(e);
    }
    return NULL;
}

/* -- Python-facing calls: the mutex without the GIL ---------------------------------- */

enum { OP_OK = 0, OP_NOMEM = -1, OP_CLOSED = -2 };

/* Run `critical` with the mutex held; OP_CLOSED without running it once the engine's
   state is freed (close() in another thread). Waiting for the mutex never holds the
   GIL (the engine thread may have it); `critical` must not touch Python objects. */
static int with_lock(Engine *e, int (*critical)(Engine *, void *), void *arg) {
    int status = OP_CLOSED;
    if (pthread_mutex_trylock(&e->mu) == 0) {
        if (!e->freed)
            status = critical(e, arg);
        pthread_mutex_unlock(&e->mu);
        return status;
    }
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&e->mu);
    if (!e->freed)
        status = critical(e, arg);
    pthread_mutex_unlock(&e->mu);
    Py_END_ALLOW_THREADS
    return status;
}

static int check_open(Engine *e) {
    if (e->closed || !e->thread_started) {
        PyErr_SetString(PyExc_RuntimeError, "the engine is closed");
        return -1;
    }
    return 0;
}

/* Turn an OP_ status into a Python exception; 0 when OP_OK. */
static int op_failed(int status) {
    if (status == OP_NOMEM)
        PyErr_NoMemory();
    else if (status == OP_CLOSED)
        PyErr_SetString(PyExc_RuntimeError, "the engine is closed");
    return status != OP_OK;
}

/* (silent, buckets, duration_sum, last_started_wall, last_duration) */
static PyObject *counts_to_python(const Engine *e, const counts_t *counts) {
    PyObject *buckets = PyTuple_New(e->nbounds + 1);
    if (buckets == NULL)
        return NULL;
    for (int i = 0; i <= e->nbounds; i++) {
        PyObject *count = PyLong_FromUnsignedLongLong(counts->buckets[i]);
        if (count == NULL) {
            Py_DECREF(buckets);
            return NULL;
        }
        PyTuple_SET_ITEM(buckets, i, count);
    }
    return Py_BuildValue("(KNddd)", (unsigned long long)counts->silent, buckets,
                         counts->duration_sum, counts->last_started_wall,
                         counts->last_duration);
}

/* With the mutex held: move a lane's silent successes out (its last start and duration
   stay: the next success overwrites them). */
static void counts_take(counts_t *into, counts_t *from) {
    *into = *from;
    from->silent = 0;
    from->duration_sum = 0.0;
    memset(from->buckets, 0, sizeof from->buckets);
}

/* With the mutex held: put back counts taken but not delivered. */
static void counts_add(counts_t *into, const counts_t *from) {
    into->silent += from->silent;
    into->duration_sum += from->duration_sum;
    for (int i = 0; i <= MAX_BOUNDS; i++)
        into->buckets[i] += from->buckets[i];
}

/* -- Engine() ------------------------------------------------------------------------- */

static int engine_init(Engine *e, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"duration_buckets", NULL};
    if (e->init_called) {
        /* Before anything is touched: the running thread reads the bounds. */
        PyErr_SetString(PyExc_RuntimeError,
                        "Engine.__init__ runs once; make a new Engine instead");
        return -1;
    }
    e->init_called = 1;
    PyObject *bounds = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O", kwlist, &bounds))
        return -1;
    PyObject *seq = PySequence_Fast(bounds, "duration_buckets must be a sequence of seconds");
    if (seq == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > MAX_BOUNDS) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "duration_buckets: at most %d bounds, got %zd",
                     MAX_BOUNDS, n);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        double bound = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, i));
        if (bound == -1.0 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return -1;
        }
        e->bounds[i] = bound;
    }
    Py_DECREF(seq);
    e->nbounds = (int)n;
    if (pthread_mutex_init(&e->mu, NULL) != 0) {
        PyErr_SetString(PyExc_OSError, "cannot create the engine's mutex");
        return -1;
    }
    e->mutex_ready = 1;
    llhttp_settings_init(&e->settings);
    e->settings.on_headers_complete = on_headers_complete;
    e->settings.on_body = on_body;
    e->settings.on_message_complete = on_message_complete;
    /* Whatever is made here is released by engine_shutdown if a later step fails. */
    e->epfd = epoll_create1(EPOLL_CLOEXEC);
    e->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    e->notify_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (e->epfd < 0 || e->wake_fd < 0 || e->notify_fd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};  /* NULL: the wake fd */
    if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, e->wake_fd, &ev) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    int err = pthread_create(&e->thread, NULL, engine_main, e);
    if (err != 0) {
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    e->thread_started = 1;
    return 0;
}

static PyObject *engine_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    (void)args;
    (void)kwds;
    Engine *e = (Engine *)type->tp_alloc(type, 0);
    if (e != NULL)
        e->epfd = e->wake_fd = e->notify_fd = -1;
    return (PyObject *)e;
}

static int stop_locked(Engine *e, void *unused) {
    (void)unused;
    e->stopping = 1;
    if (e->wake_fd >= 0)
        signal_fd(e->wake_fd);
    return OP_OK;
}

/* With the thread gone (or never started): every lane and table, and the descriptors. */
static int free_locked(Engine *e, void *unused) {
    (void)unused;
    e->freed = 1;
    for (size_t i = 0; i < e->nslots; i++)
        if (e->slots[i] != NULL)
            lane_destroy(e->slots[i]);  /* live ones, queued or not */
    while (e->dropped != NULL) {        /* recalled ones the engine had not freed yet */
        lane_t *lane = e->dropped;
        e->dropped = lane->dropped_next;
        lane_destroy(lane);
    }
    e->incoming = NULL;  /* its lanes were in the table */
    if (e->epfd >= 0)
        close(e->epfd);
    if (e->wake_fd >= 0)
        close(e->wake_fd);
    if (e->notify_fd >= 0)
        close(e->notify_fd);
    e->epfd = e->wake_fd = e->notify_fd = -1;
    free(e->slots);
    free(e->generations);
    free(e->free_slots);
    free(e->heap);
    free(e->reports);
    e->slots = NULL;
    e->generations = NULL;
    e->free_slots = NULL;
    e->heap = NULL;
    e->reports = NULL;
    e->nslots = e->nfree = e->live = e->heap_len = e->heap_cap = 0;
    e->nreports = e->reports_cap = e->reports_reserved = 0;
    return OP_OK;
}

static void engine_shutdown(Engine *e) {
    if (e->closed)
        return;
    e->closed = 1;  /* with the GIL: a second close() returns here */
    if (!e->mutex_ready)
        return;  /* __init__ never got as far as making anything */
    if (e->thread_started) {
        with_lock(e, stop_locked, NULL);
        Py_BEGIN_ALLOW_THREADS
        pthread_join(e->thread, NULL);  /* answered within one loop turn (<= 1 s) */
        Py_END_ALLOW_THREADS
    }
    /* Other Python threads may be inside a call: they see `freed` under the mutex. */
    with_lock(e, free_locked, NULL);
}

static void engine_dealloc(Engine *e) {
    engine_shutdown(e);
    if (e->mutex_ready)
        pthread_mutex_destroy(&e->mu);  /* no call can be running: they hold a reference */
    Py_TYPE(e)->tp_free((PyObject *)e);
}

static int parse_address(const char *host, int port, lane_t *lane) {
    struct sockaddr_in *v4 = (struct sockaddr_in *)&lane->addr;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&lane->addr;
    memset(&lane->addr, 0, sizeof lane->addr);
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        lane->addrlen = sizeof *v4;
        return 0;
    }
    if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        lane->addrlen = sizeof *v6;
        return 0;
    }
    return -1;
}

/* With the mutex held. Find a free slot, growing the tables. SIZE_MAX: out of memory. */
static size_t take_slot(Engine *e) {
    if (e->nfree == 0) {
        size_t grow = e->nslots ? e->nslots : 256;
        size_t total = e->nslots + grow;
        if (total > 0xFFFFFF)
            return SIZE_MAX;
        /* Each table is grown on its own; one that could not be stays as it was, and
           nslots changes only once all three have room. */
        lane_t **slots = realloc(e->slots, total * sizeof *slots);
        if (slots == NULL)
            return SIZE_MAX;
        e->slots = slots;
        uint32_t *generations = realloc(e->generations, total * sizeof *generations);
        if (generations == NULL)
            return SIZE_MAX;
        e->generations = generations;
        size_t *free_slots = realloc(e->free_slots, total * sizeof *free_slots);
        if (free_slots == NULL)
            return SIZE_MAX;
        e->free_slots = free_slots;
        for (size_t i = total; i > e->nslots; i--) {
            e->slots[i - 1] = NULL;
            e->generations[i - 1] = 0;
            e->free_slots[e->nfree++] = i - 1;
        }
        e->nslots = total;
    }
    return e->free_slots[--e->nfree];
}

/* With the mutex held: room for `needed` reports, so a handback never allocates. */
static int reports_reserve(Engine *e, size_t needed) {
    if (needed <= e->reports_cap)
        return 0;
    size_t cap = e->reports_cap ? e->reports_cap * 2 : 64;
    while (cap < needed)
        cap *= 2;
    report_t *grown = realloc(e->reports, cap * sizeof *grown);
    if (grown == NULL)
        return -1;
    e->reports = grown;
    e->reports_cap = cap;
    return 0;
}

typedef struct {
    lane_t *lane;
    uint64_t id;
} offload_op;

static int offload_locked(Engine *e, void *arg) {
    offload_op *op = arg;
    lane_t *lane = op->lane;
    if (reports_reserve(e, e->reports_reserved + 1) < 0)
        return OP_NOMEM;
    size_t slot = take_slot(e);
    if (slot == SIZE_MAX)
        return OP_NOMEM;
    e->generations[slot]++;
    lane->id = ((uint64_t)(e->generations[slot] & 0xFFFFFF) << 24 | slot) + ((uint64_t)1 << 48);
    e->slots[slot] = lane;
    e->live++;
    e->reports_reserved++;
    if (e->incoming == NULL)
        signal_fd(e->wake_fd);  /* the engine may be sleeping past this lane's tick */
    lane->incoming_next = e->incoming;
    e->incoming = lane;
    op->id = lane->id;  /* the engine may free the lane once the mutex is released */
    return OP_OK;
}

static PyObject *engine_offload(Engine *e, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"host", "port", "request", "expect_status", "timeout", "period",
                             "tick", "valid_until", NULL};
    const char *host;
    int port, expect_status;
    Py_buffer request = {0};
    PyObject *request_obj;
    double timeout, period, tick, valid_until;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "siOidddd", kwlist, &host, &port,
                                     &request_obj, &expect_status, &timeout, &period, &tick,
                                     &valid_until))
        return NULL;
    if (check_open(e) < 0)
        return NULL;
    if (port < 1 || port > 65535 || !(timeout > 0) || !(period > 0)) {
        PyErr_SetString(PyExc_ValueError, "port 1-65535, timeout and period > 0 required");
        return NULL;
    }
    lane_t *lane = calloc(1, sizeof *lane);
    if (lane == NULL)
        return PyErr_NoMemory();
    lane->fd = -1;
    lane->heap_index = SIZE_MAX;
    if (parse_address(host, port, lane) < 0) {
        free(lane);
        PyErr_Format(PyExc_ValueError, "%s is not an IP address literal", host);
        return NULL;
    }
    if (request_obj != Py_None) {
        if (PyObject_GetBuffer(request_obj, &request, PyBUF_SIMPLE) < 0) {
            free(lane);
            return NULL;
        }
        lane->request = malloc(request.len ? (size_t)request.len : 1);
        if (lane->request != NULL && request.len > 0)
            memcpy(lane->request, request.buf, (size_t)request.len);
        lane->request_len = (size_t)request.len;
        PyBuffer_Release(&request);
        if (lane->request == NULL) {
            free(lane);
            return PyErr_NoMemory();
        }
    }
    lane->expect_status = lane->request != NULL ? expect_status : 0;
    lane->timeout = timeout;
    lane->period = period;
    lane->tick = tick;
    lane->valid_until = valid_until;
    offload_op op = {.lane = lane};
    if (op_failed(with_lock(e, offload_locked, &op))) {
        lane_destroy(lane);
        return NULL;
    }
    return PyLong_FromUnsignedLongLong(op.id);
}

typedef struct {
    uint64_t id;
    int found;
    counts_t counts;
} recall_op;

static int recall_locked(Engine *e, void *arg) {
    recall_op *op = arg;
    lane_t *lane = lane_by_id(e, op->id);
    if (lane == NULL)
        return OP_OK;  /* unknown, or handed back already: its report says the rest */
    op->found = 1;
    counts_take(&op->counts, &lane->counts);
    lane->recalled = 1;
    lane_unlink(e, lane);
    e->reports_reserved--;
    if (e->dropped == NULL)
        signal_fd(e->wake_fd);  /* close its socket now, not at the next tick */
    lane->dropped_next = e->dropped;
    e->dropped = lane;
    return OP_OK;
}

static PyObject *engine_recall(Engine *e, PyObject *arg) {
    recall_op op = {0};
    op.id = PyLong_AsUnsignedLongLong(arg);
    if (op.id == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    if (check_open(e) < 0)
        return NULL;
    if (op_failed(with_lock(e, recall_locked, &op)))
        return NULL;
    if (!op.found)
        Py_RETURN_NONE;
    /* Out of memory here loses these counts; the lane is stopped all the same. */
    return counts_to_python(e, &op.counts);
}

typedef struct {
    report_t *items;
    size_t n;
    int delivered;
} reports_op;

static int take_reports_locked(Engine *e, void *arg) {
    reports_op *op = arg;
    if (e->taking_reports || e->nreports == 0)
        return OP_OK;  /* another thread is delivering them (and re-announces what remains) */
    op->items = malloc(e->nreports * sizeof *op->items);
    if (op->items == NULL)
        return OP_NOMEM;
    uint64_t drained;
    ssize_t got = read(e->notify_fd, &drained, sizeof drained);
    (void)got;
    op->n = e->nreports;
    memcpy(op->items, e->reports, op->n * sizeof *op->items);
    e->taking_reports = 1;  /* the queue's head stays until delivered */
    return OP_OK;
}

static int commit_reports_locked(Engine *e, void *arg) {
    reports_op *op = arg;
    e->taking_reports = 0;
    if (op->delivered) {
        size_t rest = e->nreports - op->n;  /* the engine only appends meanwhile */
        if (rest > 0)
            memmove(e->reports, e->reports + op->n, rest * sizeof *e->reports);
        e->nreports = rest;
        e->reports_reserved -= op->n;
    }
    if (e->nreports > 0)
        signal_fd(e->notify_fd);  /* left for the next call */
    return OP_OK;
}

static PyObject *reports_to_python(Engine *e, const reports_op *op) {
    PyObject *out = PyList_New((Py_ssize_t)op->n);
    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < op->n; i++) {
        const report_t *report = &op->items[i];
        PyObject *counts = counts_to_python(e, &report->counts);
        PyObject *item = counts == NULL ? NULL
            : Py_BuildValue("(KidddN)", (unsigned long long)report->id, report->reason,
                            report->tick, report->started_wall, report->duration, counts);
        if (item == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, (Py_ssize_t)i, item);
    }
    return out;
}

static PyObject *engine_take_reports(Engine *e, PyObject *unused) {
    (void)unused;
    if (check_open(e) < 0)
        return NULL;
    reports_op op = {0};
    if (op_failed(with_lock(e, take_reports_locked, &op)))
        return NULL;
    if (op.n == 0) {
        free(op.items);
        return PyList_New(0);
    }
    PyObject *out = reports_to_python(e, &op);
    op.delivered = out != NULL;  /* if not, they stay queued for the next call */
    with_lock(e, commit_reports_locked, &op);
    free(op.items);
    return out;
}

typedef struct {
    uint64_t id;
    counts_t counts;
} folded_t;

typedef struct {
    uint64_t only;  /* 0: every lane */
    folded_t *items;
    size_t n;
} fold_op;

static int fold_locked(Engine *e, void *arg) {
    fold_op *op = arg;
    size_t room = op->only != 0 ? 1 : e->live;
    if (room == 0)
        return OP_OK;
    op->items = malloc(room * sizeof *op->items);
    if (op->items == NULL)
        return OP_NOMEM;
    if (op->only != 0) {
        lane_t *lane = lane_by_id(e, op->only);
        if (lane != NULL && lane->counts.silent > 0) {
            op->items[0].id = lane->id;
            counts_take(&op->items[0].counts, &lane->counts);
            op->n = 1;
        }
        return OP_OK;
    }
    for (size_t i = 0; i < e->nslots && op->n < room; i++) {
        lane_t *lane = e->slots[i];
        if (lane == NULL || lane->counts.silent == 0)
            continue;
        op->items[op->n].id = lane->id;
        counts_take(&op->items[op->n].counts, &lane->counts);
        op->n++;
    }
    return OP_OK;
}

static int unfold_locked(Engine *e, void *arg) {
    fold_op *op = arg;
    for (size_t i = 0; i < op->n; i++) {
        lane_t *lane = lane_by_id(e, op->items[i].id);
        if (lane != NULL)
            counts_add(&lane->counts, &op->items[i].counts);
    }
    return OP_OK;
}

static PyObject *folded_to_python(Engine *e, const fold_op *op) {
    PyObject *out = PyList_New((Py_ssize_t)op->n);
    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < op->n; i++) {
        PyObject *counts = counts_to_python(e, &op->items[i].counts);
        PyObject *item = counts == NULL ? NULL
            : Py_BuildValue("(KN)", (unsigned long long)op->items[i].id, counts);
        if (item == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, (Py_ssize_t)i, item);
    }
    return out;
}

static PyObject *engine_fold(Engine *e, PyObject *arg) {
    /* fold(None): every running lane with new silent successes; fold(id): that lane. */
    if (check_open(e) < 0)
        return NULL;
    fold_op op = {0};
    if (arg != Py_None) {
        op.only = PyLong_AsUnsignedLongLong(arg);
        if (op.only == (unsigned long long)-1 && PyErr_Occurred())
            return NULL;
        if (op.only == 0)
            return PyList_New(0);  /* no lane has id 0 */
    }
    if (op_failed(with_lock(e, fold_locked, &op)))
        return NULL;
    PyObject *out = folded_to_python(e, &op);
    if (out == NULL)
        with_lock(e, unfold_locked, &op);  /* not delivered: the lanes keep them */
    free(op.items);
    return out;
}

static PyObject *engine_fileno(Engine *e, PyObject *unused) {
    (void)unused;
    if (check_open(e) < 0)
        return NULL;
    return PyLong_FromLong(e->notify_fd);
}

static PyObject *engine_close(Engine *e, PyObject *unused) {
    (void)unused;
    engine_shutdown(e);
    Py_RETURN_NONE;
}

static int live_locked(Engine *e, void *arg) {
    *(Py_ssize_t *)arg = (Py_ssize_t)e->live;  /* 0 once freed */
    return OP_OK;
}

static Py_ssize_t engine_len(Engine *e) {
    if (e->closed || !e->thread_started)
        return 0;
    Py_ssize_t live = 0;
    with_lock(e, live_locked, &live);
    return live;
}

static PyMethodDef engine_methods[] = {
    {"offload", (PyCFunction)(void (*)(void))engine_offload, METH_VARARGS | METH_KEYWORDS,
     "offload(host, port, request, expect_status, timeout, period, tick, valid_until) -> id\n"
     "Repeat a settled probe from `tick` (monotonic) every `period` until its answer\n"
     "differs or `valid_until` passes. request None: tcpSocket."},
    {"recall", (PyCFunction)engine_recall, METH_O,
     "recall(id) -> counts or None: stop the lane; None if it has already been handed back."},
    {"take_reports", (PyCFunction)engine_take_reports, METH_NOARGS,
     "take_reports() -> [(id, reason, tick, started_wall, duration, counts)]: lanes ended."},
    {"fold", (PyCFunction)engine_fold, METH_O,
     "fold(id or None) -> [(id, counts)]: silent successes since the last fold."},
    {"fileno", (PyCFunction)engine_fileno, METH_NOARGS,
     "The eventfd that becomes readable when reports are waiting."},
    {"close", (PyCFunction)engine_close, METH_NOARGS,
     "Stop the engine thread and drop every lane (their counts are lost)."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods engine_as_sequence = {
    .sq_length = (lenfunc)engine_len,
};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "vmhealth_fastlane.Engine",
    .tp_basicsize = sizeof(Engine),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Engine(duration_buckets): repeats settled network probes in a thread of its own.",
    .tp_new = engine_new,
    .tp_init = (initproc)engine_init,
    .tp_dealloc = (destructor)engine_dealloc,
    .tp_methods = engine_methods,
    .tp_as_sequence = &engine_as_sequence,
};

static struct PyModuleDef fastlane_module = {
    PyModuleDef_HEAD_INIT, "vmhealth_fastlane",
    "Native repetition of settled network probes (see src/native/fastlane.c).", -1, NULL,
};

PyMODINIT_FUNC PyInit_vmhealth_fastlane(void) {
    if (PyType_Ready(&EngineType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&fastlane_module);
    if (module == NULL)
        return NULL;
    Py_INCREF(&EngineType);
    if (PyModule_AddObject(module, "Engine", (PyObject *)&EngineType) < 0
            || PyModule_AddStringConstant(module, "__version__", VMHEALTH_VERSION) < 0
            || PyModule_AddIntConstant(module, "DIFFERENT", REASON_DIFFERENT) < 0
            || PyModule_AddIntConstant(module, "TIMEOUT", REASON_TIMEOUT) < 0
            || PyModule_AddIntConstant(module, "STALE", REASON_STALE) < 0
            || PyModule_AddIntConstant(module, "HOST", REASON_HOST) < 0
            || PyModule_AddIntConstant(module, "BODY_CAP_BYTES", BODY_CAP_BYTES) < 0
            || PyModule_AddIntConstant(module, "HEAD_CAP_BYTES", HEAD_CAP_BYTES) < 0
            || PyModule_AddIntConstant(module, "AFTER_HEAD_CAP_BYTES", AFTER_HEAD_CAP_BYTES) < 0
            || PyModule_AddIntConstant(module, "READ_BUDGET_BYTES", READ_BUDGET_BYTES) < 0) {
        Py_DECREF(&EngineType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
