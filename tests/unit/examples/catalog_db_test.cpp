#include "examples/catalog_db.hpp"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <limits>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace catalog {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// Each test gets its own directory so parallel test runs never share a database file.
class catalog_db_test : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "catalog_db_test.XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  // Zero latency by default: only the pool test needs queries to overlap.
  db_options options(std::size_t seed_items = 50, std::size_t connections = 2) const {
    db_options o;
    o.path = (dir_ / "catalog.db").string();
    o.connections = connections;
    o.extra_latency = 0ms;
    o.seed_items = seed_items;
    return o;
  }

  fs::path dir_;
};

TEST_F(catalog_db_test, SeedsOnceAndReopenDoesNotDuplicate) {
  {
    database db(options(50));
    EXPECT_EQ(db.item_count(), 50);
  }
  EXPECT_TRUE(fs::exists(dir_ / "catalog.db"));
  // A larger seed_items on reopen must not add rows: an existing, non-empty table is left alone.
  database db(options(80));
  EXPECT_EQ(db.item_count(), 50);
}

TEST_F(catalog_db_test, SeedsAnEmptyExistingFile) {
  std::ofstream(dir_ / "catalog.db").close();
  ASSERT_EQ(fs::file_size(dir_ / "catalog.db"), 0u);
  database db(options(10));
  EXPECT_EQ(db.item_count(), 10);
}

TEST_F(catalog_db_test, SeedContentIsDeterministic) {
  database db(options(50));
  const auto it = db.get_item(42);
  ASSERT_TRUE(it.has_value());
  EXPECT_EQ(it->id, 42);
  EXPECT_EQ(it->name, "Item 0042");
  EXPECT_FALSE(it->description.empty());
  EXPECT_GT(it->price, 0.0);
  EXPECT_EQ(it->image_svg, placeholder_svg(42));

  // A second, independently seeded file holds the same row.
  db_options other = options(50);
  other.path = (dir_ / "other.db").string();
  database db2(other);
  const auto same = db2.get_item(42);
  ASSERT_TRUE(same.has_value());
  EXPECT_EQ(same->name, it->name);
  EXPECT_EQ(same->description, it->description);
  EXPECT_EQ(same->price, it->price);
}

TEST_F(catalog_db_test, GetItemFoundAndNotFound) {
  database db(options(50));
  EXPECT_TRUE(db.get_item(1).has_value());
  EXPECT_TRUE(db.get_item(50).has_value());
  EXPECT_FALSE(db.get_item(0).has_value());
  EXPECT_FALSE(db.get_item(51).has_value());
  EXPECT_FALSE(db.get_item(-7).has_value());
  // A miss must not leave the statement stuck: the same connection serves the next lookup.
  EXPECT_EQ(db.get_item(2)->id, 2);
  EXPECT_EQ(db.busy(), 0u);
}

TEST_F(catalog_db_test, ListItemsPagesInIdOrder) {
  database db(options(25));
  std::vector<std::int64_t> seen;
  for (std::int64_t offset = 0;; offset += 10) {
    const auto page = db.list_items(offset, 10);
    if (page.empty()) break;
    EXPECT_LE(page.size(), 10u);
    for (const auto& it : page) seen.push_back(it.id);
  }
  ASSERT_EQ(seen.size(), 25u);
  for (std::size_t i = 0; i < seen.size(); ++i)
    EXPECT_EQ(seen[i], static_cast<std::int64_t>(i + 1));

  EXPECT_EQ(db.list_items(20, 10).size(), 5u);
  EXPECT_TRUE(db.list_items(25, 10).empty());
  EXPECT_TRUE(db.list_items(0, 0).empty());
  EXPECT_EQ(db.list_items(-5, 3).front().id, 1);  // a negative offset reads from the start
}

TEST_F(catalog_db_test, PoolNeverLendsMoreThanItsConnections) {
  db_options o = options(20, 2);
  o.extra_latency = 20ms;  // long enough that the six callers overlap and have to wait
  database db(o);
  ASSERT_EQ(db.connections(), 2u);

  std::atomic<int> found{0};
  std::atomic<std::size_t> peak_seen{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&, t] {
      if (db.get_item(t + 1).has_value()) ++found;
      std::size_t b = db.busy();
      std::size_t prev = peak_seen.load();
      while (b > prev && !peak_seen.compare_exchange_weak(prev, b)) {
      }
    });
  }
  for (auto& th : threads) th.join();

  EXPECT_EQ(found.load(), 6);
  EXPECT_GT(db.max_busy(), 0u);
  EXPECT_LE(db.max_busy(), 2u);
  EXPECT_LE(peak_seen.load(), 2u);
  EXPECT_EQ(db.busy(), 0u);
}

TEST_F(catalog_db_test, RejectsZeroConnections) {
  EXPECT_THROW(database db(options(5, 0)), std::invalid_argument);
}

TEST_F(catalog_db_test, OpenFailureCarriesSqliteMessage) {
  db_options o = options();
  o.path = (dir_ / "missing-dir" / "catalog.db").string();
  try {
    database db(o);
    FAIL() << "expected std::runtime_error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("unable to open database file"), std::string::npos)
        << e.what();
  }
}

TEST_F(catalog_db_test, NonDatabaseFileIsAnError) {
  std::ofstream(dir_ / "catalog.db") << "this is certainly not an sqlite database, just text\n";
  try {
    database db(options());
    FAIL() << "expected std::runtime_error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("not a database"), std::string::npos) << e.what();
  }
}

TEST(catalog_item_to_json, EscapesQuotesBackslashesAndControlChars) {
  item it;
  it.id = 7;
  it.name = "say \"hi\" \\ bye";
  it.description = std::string("a\nb\tc\rd\be\ff") + '\x01' + '\x1f' + " caf\xc3\xa9";
  it.price = 12.5;
  it.image_svg = "<svg/>";  // never serialized
  EXPECT_EQ(item_to_json(it),
            "{\"id\":7,\"name\":\"say \\\"hi\\\" \\\\ bye\","
            "\"description\":\"a\\nb\\tc\\rd\\be\\ff\\u0001\\u001f caf\xc3\xa9\","
            "\"price\":12.5}");
}

TEST(catalog_item_to_json, EmbeddedNulAndNonFinitePrice) {
  item it;
  it.id = -1;
  it.name = std::string("a\0b", 3);
  it.price = std::numeric_limits<double>::quiet_NaN();
  EXPECT_EQ(item_to_json(it),
            "{\"id\":-1,\"name\":\"a\\u0000b\",\"description\":\"\",\"price\":null}");
}

TEST(catalog_placeholder_svg, DeterministicAndDistinct) {
  EXPECT_EQ(placeholder_svg(42), placeholder_svg(42));
  EXPECT_NE(placeholder_svg(42), placeholder_svg(43));
  const std::string svg = placeholder_svg(123456789);
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("123456789"), std::string::npos);
  EXPECT_EQ(svg.substr(svg.size() - 6), "</svg>");
}

}  // namespace
}  // namespace catalog
