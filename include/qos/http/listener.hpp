// qos's listener: the accept loop, the reactor threads and the connection cap in front of a
// connection_handler, in place of Pistache's Http::Endpoint (whose listener accepts one
// connection per epoll wake, drops its configured backlog and spins when descriptors run out).
//
// - Accepts in batches: every wake accepts until the kernel's queue is empty, on a thread of
//   its own, and hands each connection to the reactor threads in turn.
// - The listen backlog is the one asked for (the kernel caps it at net.core.somaxconn).
// - start() raises the soft descriptor limit (RLIMIT_NOFILE) to the hard one; the connection
//   cap (`max_connections`, or derived from that limit) keeps enough descriptors free for the
//   rest of the process. At the cap a new connection gets a short 503 and is closed at once;
//   established ones keep being served, and new ones are taken as soon as one closes.
// - If descriptors still run out (another part of the process holds them), a reserve
//   descriptor is given up to accept and close the waiting connection (as nginx and libev do),
//   and accepting pauses briefly: never a busy loop.
// - stop_accepting() closes the listen socket (nothing new is accepted, established
//   connections keep being served); shutdown() also stops the reactor threads.
//
// Thread-safe after start(). Destroy it after every writer into it has gone (qos::runtime's
// drain).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <pistache/reactor.h>

#include "qos/http/connection.hpp"

namespace qos {

struct listener_options {
  std::string address = "127.0.0.1";  // a numeric IPv4 or IPv6 address, or a host name
  std::uint16_t port = 0;             // 0: any free port (port() tells which)
  std::size_t reactor_threads = 2;
  int backlog = 4096;
  // Most connections open at once; 0 derives it from the descriptor limit (see
  // default_max_connections), which also caps a larger value (with a warning).
  std::size_t max_connections = 0;
  // Pistache 0.0.5 (defect 18) busy-loops a reactor thread on a response its client does not
  // read, and every connection of that reactor waits. A reactor that made no progress for this
  // long has the connections whose sockets are full cut (0: no watchdog).
  std::chrono::milliseconds write_stall{1000};
};

// The cap used when none is configured, for a descriptor limit of `nofile`: all but a tenth
// (at least 256 but at most half, and at most 4096), which stay for the process's other files
// (timers, pools, logs, databases).
std::size_t default_max_connections(std::size_t nofile) noexcept;

class listener {
 public:
  listener(std::shared_ptr<connection_handler> handler, listener_options options);
  listener(const listener&) = delete;
  listener& operator=(const listener&) = delete;
  ~listener();  // shutdown()

  // Binds, listens and starts the reactor threads and the accept thread. Throws
  // std::system_error when the address cannot be bound, std::invalid_argument when it cannot
  // be resolved. Threads started here inherit the caller's signal mask.
  void start();

  // The bound port (the real one when port 0 was asked for); 0 before start().
  std::uint16_t port() const noexcept { return port_; }
  // The cap in force (after start(): derived from the raised descriptor limit when 0).
  std::size_t max_connections() const noexcept { return max_connections_; }
  // Connections accepted and not yet closed.
  std::size_t connections() const noexcept;
  // Connections closed at accept because the cap was reached, or descriptors ran out.
  std::uint64_t refused() const noexcept { return refused_.load(std::memory_order_relaxed); }
  // Connections cut by the write-stall watchdog (listener_options::write_stall).
  std::uint64_t stalled_writes_cut() const noexcept {
    return stalled_cut_.load(std::memory_order_relaxed);
  }

  // Closes the listen socket: new clients are refused by the kernel, established connections
  // are still served. Idempotent.
  void stop_accepting();
  // Writes out every response queued on the connections so far, whatever thread answered it,
  // before `until`: true when all of them reached their sockets (or their clients went away),
  // false at `until` (a client that reads nothing keeps its own unwritten). Responses answered
  // off the reactor threads are only queued there, and shutdown() drops what is still queued:
  // call this between the end of the last handler and shutdown(). Any thread but a reactor's.
  // `give_up`, when given, is asked every millisecond: true ends the wait (false returned).
  bool flush(std::chrono::steady_clock::time_point until,
             const std::function<bool()>& give_up = {});
  // connection_handler::end_keep_alive(): each connection closes after its next response.
  void end_keep_alive() noexcept { handler_->end_keep_alive(); }
  // stop_accepting(), then stops the reactor threads (connections are dropped). Idempotent.
  void shutdown();

 private:
  void accept_main();
  bool accept_batch();  // false: paused (descriptors ran out)
  void refuse(int fd) noexcept;
  void watch_main();  // the write-stall watchdog's thread

  std::shared_ptr<connection_handler> handler_;
  listener_options options_;
  std::size_t max_connections_ = 0;
  std::uint16_t port_ = 0;

  int listen_fd_ = -1;
  int epoll_fd_ = -1;
  int wake_fd_ = -1;     // eventfd: stop_accepting() wakes the accept thread
  int reserve_fd_ = -1;  // given up when accept4 fails with EMFILE/ENFILE

  Pistache::Aio::Reactor reactor_;
  Pistache::Aio::Reactor::Key transport_key_;
  std::vector<std::shared_ptr<Pistache::Aio::Handler>> transports_;
  std::size_t next_transport_ = 0;  // accept thread only
  bool starved_ = false;            // accept thread only: descriptors ran out, said once

  std::atomic<std::uint64_t> accepted_{0};
  std::atomic<std::uint64_t> refused_{0};
  std::atomic<std::uint64_t> stalled_cut_{0};
  std::thread watchdog_;
  std::mutex watch_mutex_;
  std::condition_variable watch_cv_;
  bool watching_ = false;  // guarded by watch_mutex_
  std::thread accept_thread_;
  bool started_ = false;
  std::atomic<bool> accepting_{false};
  bool reactor_running_ = false;  // guarded by stop_mutex_
  std::mutex stop_mutex_;         // stop_accepting() and shutdown() from any thread
};

}  // namespace qos
