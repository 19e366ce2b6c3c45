#include "qos/http/listener.hpp"
#include "qos/http/detail/reactor_call.hpp"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>
#include <system_error>

#include <pistache/net.h>
#include <pistache/peer.h>
#include <pistache/transport.h>

#include "qos/ops/log.hpp"

namespace qos {

namespace tcp = Pistache::Tcp;
namespace aio = Pistache::Aio;

namespace {

std::system_error sys_error(const std::string& what) {
  return std::system_error(errno, std::generic_category(), what);
}

// What a client at the cap reads before the close: a complete answer, so that it backs off
// instead of retrying at once. Written without blocking; a client that has not drained its
// receive window simply sees the close.
constexpr char at_cap_response[] =
    "HTTP/1.1 503 Service Unavailable\r\n"
    "Connection: close\r\n"
    "Retry-After: 1\r\n"
    "Content-Type: text/plain\r\n"
    "Content-Length: 20\r\n"
    "\r\n"
    "too many connections";

// Raises the soft descriptor limit to the hard one (as nginx's worker_rlimit_nofile and
// HAProxy's automatic ulimit-n do) and returns the limit in force.
std::size_t raise_nofile_limit() {
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) != 0) return 1024;
  if (lim.rlim_cur < lim.rlim_max) {
    rlimit raised = lim;
    raised.rlim_cur = lim.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &raised) == 0) lim = raised;
  }
  if (lim.rlim_cur == RLIM_INFINITY) return std::size_t{1} << 20;
  return static_cast<std::size_t>(lim.rlim_cur);
}

int open_reserve() noexcept {
  return ::open("/dev/null", O_RDONLY | O_CLOEXEC);
}

}  // namespace

std::size_t default_max_connections(std::size_t nofile) noexcept {
  const std::size_t kept = std::min(std::clamp<std::size_t>(nofile / 10, 256, 4096), nofile / 2);
  return nofile > kept ? nofile - kept : 1;
}

listener::listener(std::shared_ptr<connection_handler> handler, listener_options options)
    : handler_(std::move(handler)), options_(std::move(options)) {
  if (!handler_) throw std::invalid_argument("listener: no handler");
  if (options_.reactor_threads == 0) throw std::invalid_argument("listener: no reactor thread");
}

listener::~listener() {
  shutdown();
  if (epoll_fd_ >= 0) ::close(epoll_fd_);
  if (wake_fd_ >= 0) ::close(wake_fd_);
  if (reserve_fd_ >= 0) ::close(reserve_fd_);
}

std::size_t listener::connections() const noexcept {
  const auto closed = handler_->closed_connections();
  const auto accepted = accepted_.load(std::memory_order_acquire);
  return accepted > closed ? static_cast<std::size_t>(accepted - closed) : 0;
}

void listener::start() {
  if (started_) return;
  const std::size_t nofile = raise_nofile_limit();
  const std::size_t room = default_max_connections(nofile);
  max_connections_ = options_.max_connections ? options_.max_connections : room;
  if (max_connections_ > room) {
    // As nginx's "worker_connections exceed open file resource limit": a cap the descriptors
    // cannot hold is no cap. Keep the room for the rest of the process.
    logger()->warn(
        "qos: max_connections {} needs more descriptors than the limit of {} leaves; using {}",
        max_connections_, nofile, room);
    max_connections_ = room;
  }

  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* found = nullptr;
  const std::string port = std::to_string(options_.port);
  if (const int rc = ::getaddrinfo(options_.address.c_str(), port.c_str(), &hints, &found);
      rc != 0) {
    throw std::invalid_argument("listener: cannot resolve " + options_.address + ": " +
                                ::gai_strerror(rc));
  }
  int fd = -1;
  int bind_errno = 0;
  for (addrinfo* a = found; a; a = a->ai_next) {
    fd = ::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    const int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    // Inherited by accepted sockets: responses go out at once instead of waiting for the
    // client's delayed ACK of the one before (pipelining, small responses), as nginx's
    // tcp_nodelay.
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (::bind(fd, a->ai_addr, a->ai_addrlen) == 0 && ::listen(fd, options_.backlog) == 0) break;
    bind_errno = errno;
    ::close(fd);
    fd = -1;
  }
  ::freeaddrinfo(found);
  if (fd < 0) {
    errno = bind_errno;
    throw sys_error("listener: cannot listen on " + options_.address + ":" + port);
  }
  listen_fd_ = fd;

  sockaddr_storage bound{};
  socklen_t len = sizeof bound;
  if (::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&bound), &len) == 0) {
    port_ = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                              : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  }

  epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
  wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  reserve_fd_ = open_reserve();
  if (epoll_fd_ < 0 || wake_fd_ < 0) throw sys_error("listener: epoll");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = listen_fd_;
  if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, listen_fd_, &ev) != 0) throw sys_error("epoll_ctl");
  ev.data.fd = wake_fd_;
  if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, wake_fd_, &ev) != 0) throw sys_error("epoll_ctl");

  // Pistache's own pieces without its listener: a reactor with one transport (and one clone
  // of the handler) per thread.
  reactor_.init(aio::AsyncContext(options_.reactor_threads, "qos-reactor"));
  transport_key_ = reactor_.addHandler(std::make_shared<tcp::Transport>(handler_));
  transports_ = reactor_.handlers(transport_key_);
  reactor_.run();
  reactor_running_ = true;

  accepting_.store(true);
  accept_thread_ = std::thread([this] { accept_main(); });
  if (options_.write_stall.count() > 0) {
    watching_ = true;
    watchdog_ = std::thread([this] { watch_main(); });
  }
  started_ = true;
}

// Pistache 0.0.5, defect 18: Transport::asyncWriteImpl retries a send that failed with EAGAIN
// at once, copying the rest of the response each time, instead of waiting for the socket's
// write edge (fixed upstream in 2025, not in Debian 12's package). A response larger than the
// socket takes, to a client that reads slowly or not at all, holds its reactor thread in that
// loop, and every connection of the reactor waits, until the client reads it all. The watchdog
// sends each reactor a probe (a timer continuation, run at its next turn) every quarter of
// write_stall; a probe still out after write_stall means the reactor made no progress, and the
// connections of that reactor whose sockets are full are cut: the send fails, the loop ends.
void listener::watch_main() {
  using steady = std::chrono::steady_clock;
  const auto period = std::clamp<std::chrono::milliseconds>(
      options_.write_stall / 4, std::chrono::milliseconds(10), std::chrono::milliseconds(250));
  std::vector<std::shared_ptr<std::atomic<bool>>> out;  // a probe of that reactor is out
  std::vector<steady::time_point> since(transports_.size());
  for (std::size_t i = 0; i < transports_.size(); ++i) {
    out.push_back(std::make_shared<std::atomic<bool>>(false));
  }
  std::unique_lock lock(watch_mutex_);
  while (watching_) {
    watch_cv_.wait_for(lock, period, [this] { return !watching_; });
    if (!watching_) break;
    lock.unlock();
    const auto now = steady::now();
    for (std::size_t i = 0; i < transports_.size(); ++i) {
      auto* transport = static_cast<tcp::Transport*>(transports_[i].get());
      if (!out[i]->load(std::memory_order_acquire)) {
        out[i]->store(true, std::memory_order_release);
        since[i] = now;
        auto flag = out[i];
        if (!detail::call_on_reactor(*transport,
                                     [flag] { flag->store(false, std::memory_order_release); })) {
          flag->store(false, std::memory_order_release);  // no timer now: try at the next tick
        }
      } else if (now - since[i] >= options_.write_stall) {
        const std::size_t cut = handler_->cut_stalled_writes(transport);
        if (cut != 0) {
          stalled_cut_.fetch_add(cut, std::memory_order_relaxed);
          logger()->warn(
              "qos: a reactor made no progress for {} ms writing to a client that does not read; "
              "cut {} connection(s) whose sockets were full",
              std::chrono::duration_cast<std::chrono::milliseconds>(now - since[i]).count(), cut);
        }
        since[i] = now;  // another write_stall before the next cut
      }
    }
    lock.lock();
  }
}

void listener::accept_main() {
  constexpr int max_events = 4;
  epoll_event events[max_events];
  int pause_ms = -1;  // after descriptors ran out: wait before trying again
  for (;;) {
    const int n = ::epoll_wait(epoll_fd_, events, max_events, pause_ms);
    if (!accepting_.load(std::memory_order_acquire)) return;
    if (n < 0) {
      if (errno == EINTR) continue;
      logger()->error("qos: listener: epoll_wait: {}", std::strerror(errno));
      return;
    }
    if (pause_ms >= 0) {
      // The pause is over: watch the listen socket again. (accept4 fails with EMFILE even
      // when nothing waits, so it is called only when a client does.)
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.fd = listen_fd_;
      ::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, listen_fd_, &ev);
      pause_ms = -1;
      continue;
    }
    if (!accept_batch()) {
      // Stop watching the listen socket (level-triggered, it would wake us at once) for a
      // while: the connections wait in the kernel's queue meanwhile.
      ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, listen_fd_, nullptr);
      pause_ms = 100;
    }
  }
}

bool listener::accept_batch() {
  for (;;) {
    sockaddr_storage peer_addr{};
    socklen_t len = sizeof peer_addr;
    const int fd = ::accept4(listen_fd_, reinterpret_cast<sockaddr*>(&peer_addr), &len,
                             SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      switch (errno) {
        case EAGAIN:
        case EINTR:
        case ECONNABORTED:
        case EPROTO:
          if (errno == EAGAIN) return true;
          continue;
        case EMFILE:
        case ENFILE: {
          // Out of descriptors beyond the cap's reckoning: take the waiting client with the
          // reserve descriptor and close it, so it learns at once instead of timing out.
          if (reserve_fd_ >= 0) {
            ::close(reserve_fd_);
            const int taken = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
            if (taken >= 0) refuse(taken);
            reserve_fd_ = open_reserve();
          }
          if (!starved_) {
            starved_ = true;
            logger()->warn(
                "qos: listener: out of file descriptors with {} connections open; refusing "
                "new ones until some are free",
                connections());
          }
          return false;
        }
        default:  // ENOBUFS, ENOMEM: the kernel is short; back off
          logger()->warn("qos: listener: accept: {}", std::strerror(errno));
          return false;
      }
    }
    if (starved_) {
      starved_ = false;
      logger()->info("qos: listener: descriptors free again");
    }
    if (connections() >= max_connections_) {
      refuse(fd);
      continue;
    }
    std::shared_ptr<tcp::Peer> peer;
    try {
      peer = tcp::Peer::Create(
          fd, Pistache::Address::fromUnix(reinterpret_cast<sockaddr*>(&peer_addr)));
    } catch (const std::exception& e) {
      logger()->warn("qos: listener: {}", e.what());
      ::close(fd);
      continue;
    }
    accepted_.fetch_add(1, std::memory_order_acq_rel);
    auto& transport = transports_[next_transport_];
    next_transport_ = (next_transport_ + 1) % transports_.size();
    std::static_pointer_cast<tcp::Transport>(transport)->handleNewPeer(peer);
  }
}

void listener::refuse(int fd) noexcept {
  refused_.fetch_add(1, std::memory_order_relaxed);
  [[maybe_unused]] const auto sent =
      ::send(fd, at_cap_response, sizeof at_cap_response - 1, MSG_DONTWAIT | MSG_NOSIGNAL);
  ::close(fd);
}

void listener::stop_accepting() {
  std::lock_guard lock(stop_mutex_);
  if (accepting_.exchange(false)) {
    const std::uint64_t one = 1;
    [[maybe_unused]] const auto w = ::write(wake_fd_, &one, sizeof one);
  }
  if (accept_thread_.joinable()) accept_thread_.join();
  if (listen_fd_ >= 0) ::close(listen_fd_);
  listen_fd_ = -1;
}

// Pistache 0.0.5, defect 17: every response, from whatever thread, only enters the
// transport's write queue; the reactor moves it to its connection at a later turn of its loop
// and writes it at the write edge after that, and Reactor::shutdown() drops whatever is still
// queued. A drain that ended with its last handler lost the answers of the last few (the
// gate's fibers answer just before they end). Here each reactor, on its own thread (a
// transport timer's continuation runs there), queues an empty write behind everything queued
// for each of its connections (connection_handler::mark_queued_writes); such a write
// completes only once every byte queued before it is in the socket, and its continuation dies
// with it, written or dropped with a connection that went away. When no continuation holds
// the token any more, every response is out.
bool listener::flush(std::chrono::steady_clock::time_point until,
                     const std::function<bool()>& give_up) {
  {
    std::lock_guard lock(stop_mutex_);
    if (!reactor_running_) return true;
  }
  auto token = std::make_shared<char>(0);
  const std::weak_ptr<char> watch = token;
  for (const auto& handler : transports_) {
    // Not a shared_ptr: the reactor owns its transports and runs this only while they live.
    auto* transport = static_cast<tcp::Transport*>(handler.get());
    if (!detail::call_on_reactor(*transport, [transport, token] {
          connection_handler::mark_queued_writes(*transport, token);
        })) {
      return false;
    }
  }
  token.reset();
  while (!watch.expired()) {
    if (std::chrono::steady_clock::now() >= until || (give_up && give_up())) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

void listener::shutdown() {
  stop_accepting();
  {
    std::lock_guard lock(watch_mutex_);
    watching_ = false;
  }
  watch_cv_.notify_all();
  std::lock_guard lock(stop_mutex_);
  if (watchdog_.joinable()) watchdog_.join();
  if (reactor_running_) {
    reactor_.shutdown();
    reactor_running_ = false;
  }
}

}  // namespace qos
