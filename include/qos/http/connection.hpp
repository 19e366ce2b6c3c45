// The connection layer in front of a Pistache handler (a Router's, or any Http::Handler): it
// frames the byte stream itself and hands the inner handler one complete request at a time, so
// pipelined requests are answered once each and in order, bad framing and garbage get 400 (or
// 413, 414, 431, 501, 505) and a close, `Connection: close`, HTTP/1.0 and HEAD connections are
// closed after their response, and slow or idle connections are timed out (408, or a quiet
// close). Installed with Endpoint::setHandler. Pistache clones it once per reactor thread; each
// clone and its connections live on that thread; writers may be answered from any thread.
//
// What the inner handler sees: a request's typed Connection header says `close` when this
// exchange ends the connection (the raw headers keep what the client sent); every writer
// carries `Connection` and `Date` headers (the Date header object is how this layer learns
// that a response is over: leave it in place). A handler that lets its writer go without
// answering gets a 500 and a close.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include <pistache/http.h>
#include <pistache/router.h>

#include "qos/config/config.hpp"

namespace qos {

// Defaults as nginx's client_header_timeout, client_body_timeout and keepalive_timeout. The
// request size limit is the endpoint's (Endpoint::options().maxRequestSize()).
struct connection_options {
  // From a connection's first byte, or from the first byte of a request after a response, to
  // the end of that request's head: 408 and close after it.
  std::chrono::milliseconds header_timeout{60000};
  // From the end of the head to the end of the body: 408 and close after it.
  std::chrono::milliseconds body_timeout{60000};
  // A kept-alive connection waiting for its next request this long is closed quietly.
  std::chrono::milliseconds keepalive_timeout{75000};
  // After qos closed its side (FIN), how long the client has to read its last response and
  // close its own side before the connection is torn down.
  std::chrono::milliseconds linger_timeout{5000};
  // Responses queued for a client that does not read them: after max_unsent_responses, no
  // request is handed on until they are written; a client that reads none of them for
  // send_timeout (nginx's send_timeout) is torn down. Pistache's write queue has no bound.
  std::chrono::milliseconds send_timeout{60000};
  std::size_t max_unsent_responses = 64;
  // Bytes held for requests behind one being answered (pipelining). Beyond this, the
  // connection is closed after the response in progress and the client retries the rest.
  std::size_t max_pipelined_bytes = std::size_t{1} << 20;
  // Test seam for Pistache defect 16 (a lost write edge): asked on the reactor thread as each
  // of this layer's write markers comes back; true drops that completion, as the defect does.
  // Empty (nothing dropped) outside tests.
  std::function<bool()> drop_marker;
};

// The `server:` timeouts of a config.
connection_options connection_options_of(const config::server_config& s);

class connection_handler final : public Pistache::Http::Handler {
 public:
  struct connection;  // one client connection: its bytes, its request in flight, its deadline
  struct shared;      // what the clones share (counters)

  connection_handler(std::shared_ptr<Pistache::Http::Handler> inner, connection_options options);
  // Pistache copies the handler once per reactor thread through clone().
  connection_handler(const connection_handler& other);
  connection_handler& operator=(const connection_handler&) = delete;
  ~connection_handler() override;

  std::shared_ptr<Pistache::Tcp::Handler> clone() const override;

  // Forwards to the inner handler; Pistache never calls it (onInput dispatches).
  void onRequest(const Pistache::Http::Request& request,
                 Pistache::Http::ResponseWriter response) override;

  // Open connections over all reactor threads. Thread-safe.
  std::size_t connections() const noexcept;
  // Connections closed since the handler was made (qos::listener counts against its cap
  // with it). Thread-safe.
  std::uint64_t closed_connections() const noexcept;
  // Write markers posted again because one was overdue with nothing left in the socket's send
  // queue: completions Pistache lost (defect 16). Thread-safe.
  std::uint64_t overdue_markers() const noexcept;

  const connection_options& options() const noexcept { return options_; }

  // Any thread: cuts (shuts down both ways) each connection of `transport` whose socket has no
  // room to write, and returns how many. For a reactor held by Pistache 0.0.5's busy loop on a
  // write the client does not read (defect 18; qos::listener's watchdog calls this).
  std::size_t cut_stalled_writes(const Pistache::Tcp::Transport* transport);

  // From now on every response says `Connection: close` and ends its connection, those of
  // requests already running included when they are written later (as nginx and Envoy do on a
  // graceful stop): a client reconnects (elsewhere, or to a refusal) instead of sending its
  // next request into the stop. Idle connections are left as they are. Thread-safe; for good.
  void end_keep_alive() noexcept;

  // On `transport`'s reactor thread only: queues an empty write behind everything queued so far
  // for each of its connections whose sending side is still open; each write's continuation
  // holds a copy of `token` until the write completes (every byte before it is in the socket)
  // or is dropped with its connection. qos::listener::flush waits on it.
  static void mark_queued_writes(Pistache::Tcp::Transport& transport,
                                 const std::shared_ptr<void>& token);

 private:
  void onConnection(const std::shared_ptr<Pistache::Tcp::Peer>& peer) override;
  void onInput(const char* buffer, std::size_t len,
               const std::shared_ptr<Pistache::Tcp::Peer>& peer) override;
  void onDisconnection(const std::shared_ptr<Pistache::Tcp::Peer>& peer) override;

  // All of these run on this clone's reactor thread.
  void serve(const std::shared_ptr<connection>& c);
  bool dispatch(const std::shared_ptr<connection>& c);
  void finish_flight(const std::shared_ptr<connection>& c);
  void reject(const std::shared_ptr<connection>& c, int status, const char* reason);
  void close_after_writes(const std::shared_ptr<connection>& c);
  void after_writes(const std::shared_ptr<connection>& c, std::uint64_t flight);
  // Returns the marker's number; a wait for writes takes only its own marker or a later one.
  static std::uint64_t post_marker(const std::shared_ptr<connection>& c);
  // Any thread (the end of a request in flight): after_writes on the reactor thread, soon.
  static void wake(const std::shared_ptr<connection>& c, std::uint64_t flight);
  static void wake_by_timer(const std::shared_ptr<connection>& c, std::uint64_t flight);
  void send_continue(const std::shared_ptr<connection>& c);
  void arm_sweep();
  void sweep();
  void repost_overdue_marker(const std::shared_ptr<connection>& c,
                             std::chrono::steady_clock::time_point now);

  std::shared_ptr<Pistache::Http::Handler> inner_;
  connection_options options_;
  std::shared_ptr<shared> shared_;
  // This clone's connections and sweep timer (reactor thread only).
  std::vector<std::weak_ptr<connection>> live_;
  std::chrono::milliseconds sweep_period_;  // from options_: the timeouts' resolution
  bool sweep_armed_ = false;
  int sweep_fd_ = -1;  // the armed sweep timer's descriptor

  friend struct connection_sentinel;
};

// `router`'s handler behind the connection layer: give it to Endpoint::setHandler in place of
// router.handler().
std::shared_ptr<connection_handler> connection_handler_for(const Pistache::Rest::Router& router,
                                                           connection_options options = {});

}  // namespace qos
