// The private PostgreSQL cluster (pg_cluster.hpp) a test binary shares, as a GoogleTest
// environment: started before the first test when the server binaries are installed, stopped
// after the last. A binary registers it once at namespace scope:
//   [[maybe_unused]] auto* const env = ::testing::AddGlobalTestEnvironment(new pg_cluster_env);
// Also sql(): one statement on a connection of its own; and fresh_database(). Header-only; the
// including binary links libpq and GoogleTest.
#pragma once

#include <gtest/gtest.h>
#include <libpq-fe.h>

#include <memory>
#include <string>
#include <vector>

#include "support/pg_cluster.hpp"

namespace qos::test {

class pg_cluster_env : public ::testing::Environment {
 public:
  void SetUp() override {
    if (pg_cluster::available()) cluster = std::make_unique<pg_cluster>();
  }
  void TearDown() override { cluster.reset(); }
  // Null when the binaries are not installed (tests skip) or the cluster did not start.
  static inline std::unique_ptr<pg_cluster> cluster;
};

// One statement on a connection of its own, `args` bound as text ($1, $2, ...); its first value
// ("" when none). A failure (to connect, or of the statement) fails the test.
inline std::string sql(const std::string& conninfo, const std::string& query,
                       const std::vector<std::string>& args = {}) {
  PGconn* c = PQconnectdb(conninfo.c_str());
  std::string out;
  if (PQstatus(c) == CONNECTION_OK) {
    std::vector<const char*> values;
    for (const auto& a : args) values.push_back(a.c_str());
    PGresult* r = PQexecParams(c, query.c_str(), static_cast<int>(values.size()), nullptr,
                               values.data(), nullptr, nullptr, 0);
    const auto st = PQresultStatus(r);
    if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
      ADD_FAILURE() << query << ": " << PQresultErrorMessage(r);
    } else if (PQntuples(r) > 0 && PQnfields(r) > 0) {
      out = PQgetvalue(r, 0, 0);
    }
    PQclear(r);
  } else {
    ADD_FAILURE() << PQerrorMessage(c);
  }
  PQfinish(c);
  return out;
}

// Why a test skips when pg_cluster::available() is false.
inline std::string pg_missing_reason() {
  return std::string("PostgreSQL 15 server binaries (") + pg_cluster::bin +
         "/initdb) are not installed: scripts/install-deps.sh installs them";
}

// The conninfo of a new database on the shared cluster (which must be running), named `prefix`
// and a number no earlier call in this process used: --gtest_repeat does not reset it.
inline std::string fresh_database(const std::string& prefix) {
  static int next = 0;
  const std::string db = prefix + std::to_string(++next);
  sql(pg_cluster_env::cluster->conninfo(), "CREATE DATABASE " + db);
  return pg_cluster_env::cluster->conninfo(db);
}

}  // namespace qos::test
