#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "driftgate/rollout_manager.hpp"

using driftgate::Decision;
using driftgate::DecisionAction;
using driftgate::DriftTracker;
using driftgate::EnforceOptions;
using driftgate::Enforcer;
using driftgate::ManualClock;
using driftgate::MetricsRegistry;
using driftgate::RolloutConfig;
using driftgate::RolloutManager;
using driftgate::RolloutStage;
using driftgate::RolloutState;
using driftgate::SharedStateStore;
using driftgate::StateError;
using driftgate::StateRegressed;
using driftgate::StateStoreError;

namespace {

constexpr double kHour = 3600;

/// A shared store in memory, with the compare-and-set a real one does on its server. It can be
/// taken down, and it fences automatic commits while `lease_held` is false.
class MemoryStore : public SharedStateStore {
  public:
    std::optional<std::string> load() override {
        std::lock_guard lock(mutex_);
        ++loads;
        if (down) throw StateStoreError("memory store is down");
        return document_;
    }

    CommitResult commit(std::uint64_t version, const std::string& document,
                        bool automatic) override {
        std::lock_guard lock(mutex_);
        if (down) throw StateStoreError("memory store is down");
        if (automatic && !lease_held) return {CommitStatus::Fenced, std::nullopt};
        // A document commits only onto one of its own incarnation (or one without any).
        const std::string stored = document_ ? incarnation_of(*document_) : "";
        if (version_ != version - 1 || (!stored.empty() && stored != incarnation_of(document))) {
            return {CommitStatus::Conflict, document_};
        }
        version_ = version;
        document_ = document;
        ++commits;
        return {CommitStatus::Committed, std::nullopt};
    }

    std::string describe() const override { return "memory store"; }

    void put(std::uint64_t version, std::string document) {
        std::lock_guard lock(mutex_);
        version_ = version;
        document_ = std::move(document);
    }
    std::optional<std::string> stored() {
        std::lock_guard lock(mutex_);
        return document_;
    }
    /// Forgets everything, as a Redis restarted without persistence does.
    void forget() {
        std::lock_guard lock(mutex_);
        version_ = 0;
        document_.reset();
    }
    static std::string incarnation_of(const std::string& document) {
        return nlohmann::json::parse(document).value("incarnation", std::string());
    }

    std::atomic<bool> down{false};
    std::atomic<bool> lease_held{true};
    std::atomic<int> commits{0};
    std::atomic<int> loads{0};

  private:
    std::mutex mutex_;
    std::uint64_t version_ = 0;
    std::optional<std::string> document_;
};

/// One replica: its own enforcer and registry, the fleet's store and clock.
struct Replica {
    Replica(std::shared_ptr<MemoryStore> store, std::shared_ptr<ManualClock> clock,
            const RolloutConfig& config = RolloutConfig::default_config()) {
        auto registry = std::make_shared<MetricsRegistry>();
        auto tracker =
            std::make_shared<DriftTracker>(driftgate::default_windows(), clock, registry);
        enforcer = std::make_shared<Enforcer>(EnforceOptions{true, 0, 0.005}, tracker);
        RolloutManager::Options options;
        options.enforcer = enforcer;
        options.registry = registry;
        options.clock = clock;
        options.store = std::move(store);
        manager = std::make_unique<RolloutManager>(config, options);
    }

    std::shared_ptr<Enforcer> enforcer;
    std::unique_ptr<RolloutManager> manager;
};

std::shared_ptr<ManualClock> fleet_clock() {
    return std::make_shared<ManualClock>(1'700'000'000.0);
}

/// Stages that never wait: every manual move is always possible.
RolloutConfig quick_stages() {
    return RolloutConfig(std::vector<RolloutStage>{
        {"a", 10, 0, 0.1, false}, {"b", 20, 0, 0.1, false}, {"c", 30, 0, 0.1, false}});
}

/// Tells `listener` of the commit that `seen` (another replica's snapshot) holds, as the
/// commit's hint does.
bool announce(RolloutManager& listener, const RolloutManager::Snapshot& seen) {
    return listener.note_announced(seen.version, seen.incarnation, seen.restore_generation,
                                   seen.transitions.back().op);
}

/// `document` as a release before incarnations wrote it.
nlohmann::json without_incarnation(const std::string& document) {
    auto json = nlohmann::json::parse(document);
    json.erase("incarnation");
    json.erase("restore_generation");
    return json;
}

}  // namespace

TEST_CASE("the first replica stores the fresh rollout, the next one resumes it", "[store]") {
    auto store = std::make_shared<MemoryStore>();
    auto clock = fleet_clock();
    Replica a(store, clock);
    CHECK(store->commits == 1);
    clock->advance(10);
    Replica b(store, clock);
    CHECK(store->commits == 1);
    CHECK(b.manager->version() == 1);
    CHECK(b.manager->snapshot().position.started_at == a.manager->snapshot().position.started_at);
    CHECK(b.enforcer->options().rollout_percent == 10);
}

TEST_CASE("a move lost to another replica is decided again on the new state", "[store]") {
    auto store = std::make_shared<MemoryStore>();
    auto clock = fleet_clock();
    Replica a(store, clock);
    Replica b(store, clock);
    REQUIRE(a.manager->manual_advance("alice").success);  // version 2, quarter
    // b still holds version 1; its advance loses the commit, follows, and advances again.
    const auto decision = b.manager->manual_advance("bob");
    CHECK(decision.success);
    CHECK(decision.from_stage == "quarter");
    CHECK(decision.to_stage == "half");
    CHECK(decision.version == 3);
    const auto history = b.manager->snapshot().transitions;
    REQUIRE(history.size() == 3);
    CHECK(history[1].actor == "alice");
    CHECK(history[2].actor == "bob");
    CHECK(history[2].from == "quarter");
}

TEST_CASE("a precondition on the version moves nothing when it no longer holds", "[store]") {
    auto store = std::make_shared<MemoryStore>();
    auto clock = fleet_clock();
    Replica a(store, clock);
    Replica b(store, clock);
    REQUIRE(a.manager->manual_advance("alice", "", 1).success);
    const auto before = store->stored();
    const auto decision = b.manager->manual_advance("bob", "", 1);  // bob also saw version 1
    CHECK_FALSE(decision.success);
    CHECK(decision.action == DecisionAction::Conflict);
    CHECK(decision.version == 2);
    CHECK_FALSE(decision.moved());
    CHECK(store->stored() == before);
    // b heard of version 2 while refusing, and applies its percentage.
    CHECK(b.enforcer->options().rollout_percent == 25);
    // A precondition naming a version this replica has not heard of yet is checked against
    // the store, not against the replica's lagging copy.
    Replica c(store, clock);
    REQUIRE(a.manager->manual_advance("alice", "", 2).success);
    CHECK(c.manager->manual_rollback("carol", "", 3).success);
}

TEST_CASE("a replica that cannot read the store serves 0 % and moves nothing", "[store]") {
    auto store = std::make_shared<MemoryStore>();
    auto clock = fleet_clock();
    Replica first(store, clock);
    REQUIRE(first.manager->manual_advance("alice").success);
    store->down = true;
    Replica late(store, clock);
    CHECK_FALSE(late.manager->synced());
    CHECK(late.manager->enforced_percentage() == 0);
    CHECK(late.enforcer->options().rollout_percent == 0);
    CHECK(late.manager->snapshot().enforced_percentage == 0);
    CHECK_THROWS_AS(late.manager->manual_advance("bob"), StateStoreError);
    CHECK_THROWS_AS(late.manager->manual_rollback("bob"), StateStoreError);
    const auto held = late.manager->evaluate(0.9, 1000);  // would roll back if it knew
    CHECK(held.action == DecisionAction::Held);
    CHECK(store->commits == 2);
    store->down = false;
    CHECK(late.manager->refresh() == 2);
    CHECK(late.manager->synced());
    CHECK(late.enforcer->options().rollout_percent == 25);
}

TEST_CASE("nothing is applied when the store fails a commit, not even a rollback", "[store]") {
    auto store = std::make_shared<MemoryStore>();
    auto clock = fleet_clock();
    Replica a(store, clock);
    REQUIRE(a.manager->manual_advance("alice").success);
    store->down = true;
    CHECK_THROWS_AS(a.manager->manual_rollback("alice"), StateStoreError);
    CHECK(a.manager->version() == 2);
    CHECK(a.enforcer->options().rollout_percent == 25);
    // The automatic rules hold too: the error is the caller's to log.
    CHECK_THROWS_AS(a.manager->evaluate(0.9, 1000), StateStoreError);
    CHECK(a.manager->version() == 2);
}

TEST_CASE("an automatic decision of an evaluator without the lease is not applied", "[store]") {
    auto store = std::make_shared<MemoryStore>();
    auto clock = fleet_clock();
    Replica a(store, clock,
              RolloutConfig(std::vector<RolloutStage>{{"a", 10, kHour, 0.1, false},
                                                      {"b", 20, kHour, 0.1, false}}));
    clock->advance(2 * kHour);
    store->lease_held = false;
    const auto decision = a.manager->evaluate(0.0, 1000);
    CHECK(decision.action == DecisionAction::Conflict);
    CHECK_THAT(decision.message, Catch::Contains("lease"));
    CHECK(a.manager->version() == 1);
    CHECK(a.enforcer->options().rollout_percent == 10);
    store->lease_held = true;
    CHECK(a.manager->evaluate(0.0, 1000).action == DecisionAction::Advanced);
}

TEST_CASE("a replica follows newer documents only", "[store]") {
    auto store = std::make_shared<MemoryStore>();
    auto clock = fleet_clock();
    Replica a(store, clock);
    Replica b(store, clock);
    const std::string version1 = *store->stored();
    REQUIRE(a.manager->manual_advance("alice").success);
    const std::string version2 = *store->stored();
    CHECK(b.manager->follow(version2));
    CHECK_FALSE(b.manager->follow(version2));
    CHECK_FALSE(b.manager->follow(version1));
    CHECK(b.manager->version() == 2);
    CHECK(b.enforcer->options().rollout_percent == 25);
    CHECK_THROWS_AS(b.manager->follow("{\"schema_version\": 1}"), StateError);
    CHECK(b.manager->version() == 2);
}

TEST_CASE("a store holding another rollout is never overwritten", "[store]") {
    auto store = std::make_shared<MemoryStore>();
    auto clock = fleet_clock();
    { Replica other(store, clock, quick_stages()); }  // a rollout of another stage list
    const auto foreign = store->stored();
    Replica a(store, clock);
    CHECK_FALSE(a.manager->synced());
    CHECK(a.enforcer->options().rollout_percent == 0);
    CHECK_THROWS_AS(a.manager->manual_advance("alice"), StateStoreError);
    CHECK(store->stored() == foreign);
    CHECK_THROWS_AS(a.manager->refresh(), StateError);
}

TEST_CASE("replicas moving at once commit every transition exactly once", "[store][threads]") {
    auto store = std::make_shared<MemoryStore>();
    auto clock = fleet_clock();
    std::vector<std::unique_ptr<Replica>> replicas;
    for (int i = 0; i < 4; ++i)
        replicas.push_back(std::make_unique<Replica>(store, clock, quick_stages()));
    constexpr int kMoves = 60;
    std::mutex seen_mutex;
    std::vector<std::uint64_t> versions;
    std::vector<std::thread> threads;
    for (int i = 0; i < 4; ++i) {
        threads.emplace_back([&, i] {
            for (int n = 0; n < kMoves; ++n) {
                auto& manager = *replicas[i]->manager;
                const auto decision =
                    (n + i) % 2 == 0 ? manager.manual_advance("op") : manager.manual_rollback("op");
                if (decision.moved()) {
                    std::lock_guard lock(seen_mutex);
                    versions.push_back(decision.version);
                }
            }
        });
    }
    for (auto& thread : threads) thread.join();
    const std::set<std::uint64_t> unique(versions.begin(), versions.end());
    CHECK(unique.size() == versions.size());  // no version acknowledged twice
    CHECK(store->commits == static_cast<int>(versions.size()) + 1);
    CHECK(*unique.rbegin() == versions.size() + 1);
    for (auto& replica : replicas) replica->manager->refresh();
    for (auto& replica : replicas) CHECK(replica->manager->version() == versions.size() + 1);
}

TEST_CASE("a fleet that started while the store was away stores the rollout once", "[store]") {
    auto store = std::make_shared<MemoryStore>();
    auto clock = fleet_clock();
    store->down = true;
    Replica a(store, clock);
    Replica b(store, clock);
    CHECK_FALSE(a.manager->synced());
    store->down = false;
    clock->advance(60);
    CHECK(a.manager->refresh() == 1);
    CHECK(b.manager->refresh() == 1);
    CHECK(store->commits == 1);
    CHECK(a.manager->synced());
    CHECK(b.enforcer->options().rollout_percent == 10);
    // The first stage's time counts from when the rollout was stored, not from the outage.
    CHECK(b.manager->snapshot().position.started_at == clock->wall());
}

namespace {

/// A store whose commits wait until released, as a stalled Redis does.
class StallingStore : public MemoryStore {
  public:
    CommitResult commit(std::uint64_t version, const std::string& document,
                        bool automatic) override {
        {
            std::unique_lock lock(gate_mutex_);
            entered_ = true;
            entered_cv_.notify_all();
            released_cv_.wait(lock, [this] { return released_; });
        }
        return MemoryStore::commit(version, document, automatic);
    }

    void wait_until_entered() {
        std::unique_lock lock(gate_mutex_);
        entered_cv_.wait(lock, [this] { return entered_; });
    }
    void release() {
        std::lock_guard lock(gate_mutex_);
        released_ = true;
        released_cv_.notify_all();
    }
    void stall() {
        std::lock_guard lock(gate_mutex_);
        released_ = false;
        entered_ = false;
    }

  private:
    std::mutex gate_mutex_;
    std::condition_variable entered_cv_;
    std::condition_variable released_cv_;
    bool entered_ = false;
    bool released_ = true;
};

}  // namespace

TEST_CASE("a status read does not wait for a move stuck in the store", "[store][threads]") {
    auto store = std::make_shared<StallingStore>();
    auto clock = fleet_clock();
    Replica a(store, clock);
    store->stall();
    std::thread mover([&] { a.manager->manual_advance("alice"); });
    store->wait_until_entered();  // the move holds the manager's lock, waiting for the store
    const auto during = a.manager->snapshot();
    CHECK(during.version == 1);
    CHECK(during.plan->position_name(during.position) == "canary");
    CHECK(during.judgement().waiting_for == driftgate::WaitingFor::Duration);
    store->release();
    mover.join();
    const auto after = a.manager->snapshot();
    CHECK(after.version == 2);
    CHECK(after.plan->position_name(after.position) == "quarter");
}

TEST_CASE("a reading taken before the rollout moved is not judged", "[store]") {
    auto store = std::make_shared<MemoryStore>();
    auto clock = fleet_clock();
    Replica evaluator(store, clock, quick_stages());
    Replica person(store, clock, quick_stages());
    const std::uint64_t read_at = evaluator.manager->version();  // the source is read now...
    REQUIRE(person.manager->manual_advance("alice").success);    // ...a person moves meanwhile
    evaluator.manager->refresh();
    const auto decision = evaluator.manager->evaluate(0.5, 1000, read_at);
    CHECK(decision.action == DecisionAction::Conflict);
    CHECK(decision.message.find("while its error rate was read at version 1") != std::string::npos);
    CHECK(decision.to_stage == "b");  // b is not rolled back on a's reading
    CHECK_FALSE(evaluator.manager->snapshot().evidence.has_value());
    CHECK(evaluator.manager->evaluate(0.5, 1000, evaluator.manager->version()).action ==
          DecisionAction::RolledBack);
}

TEST_CASE("a reading whose move fails to commit still shows in the status", "[store]") {
    auto store = std::make_shared<MemoryStore>();
    auto clock = fleet_clock();
    Replica a(store, clock, quick_stages());
    store->down = true;
    CHECK_THROWS_AS(a.manager->evaluate_counts(0, 500), StateStoreError);  // would advance
    const auto snapshot = a.manager->snapshot();
    REQUIRE(snapshot.evidence.has_value());
    CHECK(snapshot.evidence->requests == 500u);
    CHECK(snapshot.last_error_rate == 0.0);
    CHECK(snapshot.version == 1);
}

TEST_CASE("a replica adopts the evaluator's reading of the stage it stands at", "[store]") {
    auto store = std::make_shared<MemoryStore>();
    auto clock = fleet_clock();
    Replica evaluator(store, clock);
    Replica other(store, clock);
    clock->advance(25 * kHour);  // canary's day is over; quarter needs approval
    const driftgate::Evidence reading{0.001, 50, std::nullopt};
    CHECK(evaluator.manager->evaluate(0.001, 50).action == DecisionAction::WaitingForApproval);
    const auto at = evaluator.manager->snapshot().position;
    CHECK(other.manager->adopt_evidence(at, reading));
    CHECK(other.manager->snapshot().evidence->requests == 50u);
    CHECK(other.manager->snapshot().judgement().action == DecisionAction::WaitingForApproval);
    CHECK_FALSE(other.manager->adopt_evidence(at, reading));  // it has a reading now
    driftgate::RolloutPosition elsewhere = at;
    elsewhere.started_at = *at.started_at + 1;
    Replica third(store, clock);
    CHECK_FALSE(third.manager->adopt_evidence(elsewhere, reading));  // another stage entry
    CHECK_FALSE(third.manager->snapshot().evidence.has_value());
    CHECK_THROWS_AS(third.manager->adopt_evidence(at, {0.5, 1, 2}), std::invalid_argument);
    CHECK_THROWS_AS(third.manager->adopt_evidence(at, {1.5, 1, 0}), std::invalid_argument);
}

TEST_CASE("every move records an operation id; a retried one is answered with its first outcome",
          "[store]") {
    auto store = std::make_shared<MemoryStore>();
    auto clock = fleet_clock();
    Replica a(store, clock);
    Replica b(store, clock);
    const auto first = a.manager->manual_advance("alice", "", std::nullopt, std::nullopt, "op-1");
    REQUIRE(first.success);
    CHECK(first.operation == "op-1");
    CHECK_FALSE(first.replayed);
    const int commits = store->commits;
    // The retry reaches another replica that has not heard of the move yet.
    const auto again = b.manager->manual_advance("alice", "", std::nullopt, std::nullopt, "op-1");
    CHECK(again.success);
    CHECK(again.replayed);
    CHECK(again.action == DecisionAction::Advanced);
    CHECK(again.from_stage == "canary");
    CHECK(again.to_stage == "quarter");
    CHECK(again.version == 2);
    CHECK(store->commits == commits);
    // Still the first outcome after later moves, whatever the retry asks.
    REQUIRE(a.manager->manual_advance("alice").success);
    const auto late = b.manager->manual_rollback("bob", "", 1, std::nullopt, "op-1");
    CHECK(late.replayed);
    CHECK(late.version == 2);
    CHECK(late.to_stage == "quarter");
    CHECK(store->commits == commits + 1);
    // A move without an id gets one of its own; another id moves again.
    const auto other = b.manager->manual_rollback("bob", "", std::nullopt, std::nullopt, "op-2");
    CHECK_FALSE(other.replayed);
    CHECK(other.version == 4);
    CHECK(a.manager->snapshot().transitions.back().op.empty() == false);
    CHECK_THROWS_AS(a.manager->manual_advance("alice", "", std::nullopt, std::nullopt, "bad id"),
                    std::invalid_argument);
}

TEST_CASE("a store that forgot the state is reported and never rebuilt", "[store]") {
    auto store = std::make_shared<MemoryStore>();
    auto clock = fleet_clock();
    Replica a(store, clock);
    REQUIRE(a.manager->manual_advance("alice").success);
    CHECK(a.manager->regressed().empty());
    store->forget();
    CHECK_THROWS_AS(a.manager->refresh(), StateRegressed);
    CHECK_FALSE(a.manager->regressed().empty());
    CHECK(a.manager->snapshot().judgement().waiting_for == driftgate::WaitingFor::Store);
    CHECK_THROWS_AS(a.manager->manual_rollback("alice"), StateRegressed);
    CHECK(a.manager->evaluate(0.9, 1000).action == DecisionAction::Held);
    CHECK_FALSE(store->stored());
    // It keeps serving the last state it knew.
    CHECK(a.enforcer->options().rollout_percent == 25);
}

TEST_CASE("another incarnation at any version is a regression, a restored one is not", "[store]") {
    auto store = std::make_shared<MemoryStore>();
    auto clock = fleet_clock();
    Replica a(store, clock);
    REQUIRE(a.manager->manual_advance("alice").success);
    REQUIRE(a.manager->manual_advance("alice").success);  // version 3
    const std::string backup = *store->stored();
    const std::string seen = a.manager->snapshot().incarnation;
    REQUIRE(seen.size() == 16);
    // The store restarts empty; a replica started now stores a fresh rollout, which people
    // move on to the same version number.
    store->forget();
    Replica fresh(store, clock);
    REQUIRE(fresh.manager->manual_rollback("bob").success);
    REQUIRE(fresh.manager->manual_advance("bob").success);  // version 3 of another incarnation
    CHECK(fresh.manager->snapshot().incarnation != seen);
    CHECK_FALSE(a.manager->follow(*store->stored()));
    CHECK_FALSE(a.manager->regressed().empty());
    // The old replica's precondition names version 3, which the store also holds: refused.
    const auto before = store->stored();
    CHECK_THROWS_AS(a.manager->manual_advance("alice", "", 3), StateRegressed);
    CHECK(store->stored() == before);
    // The backup comes back with a higher restore generation: every replica takes it.
    auto restored = nlohmann::json::parse(backup);
    restored["restore_generation"] = 1;
    store->put(3, restored.dump());
    CHECK(a.manager->refresh() == 3);
    CHECK(a.manager->regressed().empty());
    CHECK(fresh.manager->follow(*store->stored()));
    CHECK(fresh.manager->snapshot().incarnation == seen);
    CHECK(a.manager->manual_advance("alice", "", 3, seen).success);
}

TEST_CASE("an older version of the same incarnation is a regression until it catches up",
          "[store]") {
    auto store = std::make_shared<MemoryStore>();
    auto clock = fleet_clock();
    Replica a(store, clock);
    const std::string version1 = *store->stored();
    REQUIRE(a.manager->manual_advance("alice").success);
    const std::string version2 = *store->stored();
    store->put(1, version1);  // a failover to a replica that missed the last commit
    CHECK_THROWS_AS(a.manager->manual_advance("alice"), StateRegressed);
    CHECK_FALSE(a.manager->regressed().empty());
    store->put(2, version2);
    CHECK(a.manager->manual_advance("alice").success);
    CHECK(a.manager->regressed().empty());
}

TEST_CASE("a commit announced but never read is a regression while the store lacks it", "[store]") {
    // The store fails over right after a's commit: b heard the commit's hint but never read
    // the state, and the new primary holds the version before it.
    auto store = std::make_shared<MemoryStore>();
    auto clock = fleet_clock();
    Replica a(store, clock);
    Replica b(store, clock);
    const std::string version1 = *store->stored();
    REQUIRE(a.manager->manual_advance("alice").success);
    const std::string version2 = *store->stored();
    const auto seen = a.manager->snapshot();
    CHECK(announce(*b.manager, seen));
    store->put(1, version1);
    CHECK_FALSE(b.manager->follow(*store->stored()));
    CHECK_THAT(b.manager->regressed(),
               Catch::Contains("holds version 1, older than version 2 whose commit it announced"));
    CHECK_THROWS_AS(b.manager->manual_advance("bob"), StateRegressed);
    CHECK(b.manager->version() == 1);
    CHECK(b.enforcer->options().rollout_percent == 10);  // serving the state it holds
    // The commit is back: b takes it.
    store->put(2, version2);
    CHECK(b.manager->follow(*store->stored()));
    CHECK(b.manager->regressed().empty());
    CHECK(b.manager->version() == 2);
}

TEST_CASE("a replica reads a commit it heard of before it moves, and holds if it is lost",
          "[store]") {
    // b heard of a's commit, then the store failed over to a primary without it, before b's
    // follower read anything: b must not commit its own version 2 over the one it knows of.
    auto store = std::make_shared<MemoryStore>();
    auto clock = fleet_clock();
    Replica a(store, clock, quick_stages());
    Replica b(store, clock, quick_stages());
    const std::string version1 = *store->stored();
    REQUIRE(a.manager->manual_advance("alice").success);
    const std::string version2 = *store->stored();
    const auto seen = a.manager->snapshot();
    REQUIRE(announce(*b.manager, seen));
    CHECK(b.manager->snapshot().announced == 2);  // pending: the follower's poll reads
    store->put(1, version1);
    const int commits = store->commits;

    CHECK_THROWS_AS(b.manager->manual_advance("bob"), StateRegressed);
    CHECK_THAT(b.manager->regressed(),
               Catch::Contains("holds version 1, older than version 2 whose commit it announced"));
    const auto held = b.manager->evaluate_counts(0, 1000);  // would advance
    CHECK(held.action == DecisionAction::Held);
    CHECK_THAT(held.message, Catch::Contains("whose commit it announced"));
    CHECK(store->commits == commits);  // nothing committed over the lost commit
    CHECK(nlohmann::json::parse(*store->stored())["version"] == 1);
    CHECK(b.manager->version() == 1);
    CHECK(b.manager->snapshot().announced == 2);  // still pending until the store holds it

    store->put(2, version2);  // the commit is back: the next move reads it and goes on from it
    CHECK(b.manager->manual_advance("bob").success);
    CHECK(b.manager->version() == 3);
    CHECK(b.manager->regressed().empty());
    CHECK(b.manager->snapshot().announced == 0);
}

TEST_CASE("boundary: a replica reads the store before a move only while a commit is announced",
          "[store][boundary]") {
    auto store = std::make_shared<MemoryStore>();
    auto clock = fleet_clock();
    Replica a(store, clock, quick_stages());
    Replica b(store, clock, quick_stages());
    // Nothing announced: an automatic decision commits without reading first.
    int loads = store->loads;
    REQUIRE(b.manager->evaluate_counts(0, 1000).action == DecisionAction::Advanced);
    CHECK(store->loads == loads);
    CHECK(b.manager->snapshot().announced == 0);
    a.manager->refresh();

    // Announced and stored: read once, then moved on from it (version 3 to 4).
    REQUIRE(a.manager->manual_advance("alice").success);
    const auto seen = a.manager->snapshot();
    REQUIRE(seen.version == 3);
    REQUIRE(announce(*b.manager, seen));
    loads = store->loads;
    CHECK(b.manager->manual_rollback("bob").success);
    CHECK(store->loads == loads + 1);
    CHECK(b.manager->version() == 4);
    CHECK(b.manager->regressed().empty());
    CHECK(b.manager->snapshot().announced == 0);  // read: nothing pending any more
}

TEST_CASE("a commit announced and lost is a regression in a state an older release wrote too",
          "[store]") {
    // After the loss, a replica of an older release (which writes no incarnation) committed:
    // its state is of the same lineage, and it lacks the announced commit all the same.
    auto store = std::make_shared<MemoryStore>();
    auto clock = fleet_clock();
    Replica a(store, clock);
    Replica b(store, clock);
    const auto older = without_incarnation(*store->stored());
    REQUIRE(a.manager->manual_advance("alice").success);
    const auto seen = a.manager->snapshot();
    REQUIRE(announce(*b.manager, seen));
    store->put(1, older.dump());
    CHECK_FALSE(b.manager->follow(*store->stored()));
    CHECK_THAT(b.manager->regressed(),
               Catch::Contains("holds version 1, older than version 2 whose commit it announced"));
    CHECK(b.manager->snapshot().announced == 2);
}

TEST_CASE("a commit announced and lost for another at its version is a regression", "[store]") {
    auto store = std::make_shared<MemoryStore>();
    auto clock = fleet_clock();
    Replica a(store, clock);
    Replica b(store, clock);
    Replica c(store, clock);
    const std::string version1 = *store->stored();
    REQUIRE(a.manager->manual_advance("alice").success);
    const auto seen = a.manager->snapshot();
    REQUIRE(announce(*b.manager, seen));
    store->put(1, version1);                               // a failover loses it
    REQUIRE(c.manager->manual_rollback("carol").success);  // c never saw it: version 2 too
    CHECK_FALSE(b.manager->follow(*store->stored()));
    CHECK_THAT(b.manager->regressed(),
               Catch::Contains("holds version 2 on a history without the step it announced"));
    CHECK(b.manager->version() == 1);
}

TEST_CASE("a restore forgets the commits announced before it", "[store]") {
    auto store = std::make_shared<MemoryStore>();
    auto clock = fleet_clock();
    Replica a(store, clock);
    Replica b(store, clock);
    const std::string version1 = *store->stored();
    REQUIRE(a.manager->manual_advance("alice").success);
    const auto seen = a.manager->snapshot();
    REQUIRE(announce(*b.manager, seen));
    store->put(1, version1);
    CHECK_FALSE(b.manager->follow(*store->stored()));
    CHECK_FALSE(b.manager->regressed().empty());
    auto restored = nlohmann::json::parse(version1);
    restored["restore_generation"] = 1;
    store->put(1, restored.dump());
    CHECK(b.manager->follow(*store->stored()));
    CHECK(b.manager->regressed().empty());
    CHECK(b.manager->follow(*store->stored()) == false);  // the same state: nothing pending
    CHECK(b.manager->regressed().empty());
}

TEST_CASE("boundary: a commit is announced only ahead of the state held, in its lineage",
          "[store][boundary]") {
    auto store = std::make_shared<MemoryStore>();
    auto clock = fleet_clock();
    Replica a(store, clock);
    const std::string incarnation = a.manager->snapshot().incarnation;
    const std::string other(16, '0');
    CHECK_FALSE(a.manager->note_announced(1, incarnation, 0, "op"));  // the version held
    CHECK_FALSE(a.manager->note_announced(2, other, 0, "op"));        // another incarnation
    CHECK_FALSE(a.manager->note_announced(2, "", 0, "op"));           // none named
    CHECK_FALSE(a.manager->note_announced(2, incarnation, 1, "op"));  // a restore's
    CHECK(a.manager->note_announced(2, incarnation, 0, "op"));        // one ahead
    CHECK_FALSE(a.manager->note_announced(2, incarnation, 0, "op"));  // announced already
    CHECK(a.manager->note_announced(3, incarnation, 0, "op-3"));      // the next one
    // A replica that never read the state has nothing an announcement could be lost from.
    store->down = true;
    Replica unsynced(store, clock);
    REQUIRE_FALSE(unsynced.manager->synced());
    CHECK_FALSE(unsynced.manager->note_announced(5, incarnation, 0, "op"));
}

TEST_CASE("boundary: a state without transitions is continued by any newer one",
          "[store][boundary]") {
    // An older release's state may hold no transition: there is no step to look for, and a
    // newer state is taken.
    auto store = std::make_shared<MemoryStore>();
    auto clock = fleet_clock();
    Replica a(store, clock);
    auto bare = nlohmann::json::parse(*store->stored());
    bare["transitions"] = nlohmann::json::array();
    store->put(1, bare.dump());
    Replica b(store, clock);
    REQUIRE(b.manager->snapshot().transitions.empty());
    a.manager->refresh();
    REQUIRE(a.manager->manual_advance("alice").success);
    CHECK(b.manager->follow(*store->stored()));
    CHECK(b.manager->version() == 2);
    CHECK(b.manager->regressed().empty());
}

TEST_CASE(
    "boundary: a read taken before this replica's commit is of its lineage without an "
    "incarnation on either side",
    "[store][boundary]") {
    // A newer state counts when either side has no incarnation (an older release's), and
    // only then or when the two match.
    auto store = std::make_shared<MemoryStore>();
    auto clock = fleet_clock();
    Replica a(store, clock);
    Replica b(store, clock);
    REQUIRE(b.manager->manual_advance("bob").success);  // b's own commit: version 2
    a.manager->refresh();
    REQUIRE(a.manager->manual_advance("alice").success);  // version 3, b has not read it
    const auto newer = without_incarnation(*store->stored());
    CHECK(b.manager->follow(newer.dump(), 1));  // read at version 1, before b's commit
    CHECK(b.manager->version() == 3);
    CHECK(b.manager->regressed().empty());

    // And the other way round: the replica holds a state without an incarnation.
    auto older_store = std::make_shared<MemoryStore>();
    Replica first(older_store, clock);
    older_store->put(1, without_incarnation(*older_store->stored()).dump());
    Replica holder(older_store, clock);
    REQUIRE(holder.manager->snapshot().incarnation.empty());
    REQUIRE(holder.manager->manual_advance("bob").success);  // writes version 2, and one
    const std::string chosen = holder.manager->snapshot().incarnation;
    REQUIRE_FALSE(chosen.empty());
    auto other_lineage = nlohmann::json::parse(*older_store->stored());
    other_lineage["version"] = 3;
    other_lineage["incarnation"] = std::string(16, 'f');
    CHECK_FALSE(holder.manager->follow(other_lineage.dump(), 1));  // another incarnation
    CHECK(holder.manager->version() == 2);
}

TEST_CASE("boundary: a hint without an incarnation is ignored by a replica that holds none",
          "[store][boundary]") {
    auto store = std::make_shared<MemoryStore>();
    auto clock = fleet_clock();
    Replica a(store, clock);
    store->put(1, without_incarnation(*store->stored()).dump());
    Replica b(store, clock);
    REQUIRE(b.manager->synced());
    REQUIRE(b.manager->snapshot().incarnation.empty());
    CHECK_FALSE(b.manager->note_announced(2, "", 0, "op"));  // names no lineage
    CHECK(b.manager->snapshot().announced == 0);
}

TEST_CASE("boundary: an announced commit found at its version, or under later ones, is held",
          "[store][boundary]") {
    // At the announced version with its step, and one version on with the step below it: the
    // store has the commit, nothing regressed; the version before it is the loss.
    for (const int later : {0, 1}) {
        auto store = std::make_shared<MemoryStore>();
        auto clock = fleet_clock();
        Replica a(store, clock);
        Replica b(store, clock);
        REQUIRE(a.manager->manual_advance("alice").success);
        const auto seen = a.manager->snapshot();
        if (later) REQUIRE(a.manager->manual_advance("alice").success);
        REQUIRE(announce(*b.manager, seen));
        CHECK(b.manager->follow(*store->stored()));
        CHECK(b.manager->regressed().empty());
        CHECK(b.manager->version() == 2u + static_cast<std::uint64_t>(later));
    }
}

TEST_CASE("a precondition with an incarnation holds only for that incarnation", "[store]") {
    auto store = std::make_shared<MemoryStore>();
    auto clock = fleet_clock();
    Replica a(store, clock);
    const std::string incarnation = a.manager->snapshot().incarnation;
    const auto wrong = a.manager->manual_advance("alice", "", 1, std::string("0000000000000000"));
    CHECK(wrong.action == DecisionAction::Conflict);
    CHECK(a.manager->version() == 1);
    CHECK(a.manager->manual_advance("alice", "", 1, incarnation).success);
}

namespace {

/// Commits, then answers as a store that lost the answer and read the state back: another
/// replica committed on top meanwhile.
class ReadBackStore : public MemoryStore {
  public:
    CommitResult commit(std::uint64_t version, const std::string& document,
                        bool automatic) override {
        auto result = MemoryStore::commit(version, document, automatic);
        if (result.status == CommitStatus::Committed && on_top) {
            auto next = nlohmann::json::parse(document);
            next["version"] = version + 1;
            next["transitions"].push_back(next["transitions"].back());
            next["transitions"].back()["op"] = "someone-else";
            put(version + 1, next.dump());
            result.current = next.dump();
        }
        return result;
    }
    bool on_top = false;
};

}  // namespace

TEST_CASE("a commit learnt by reading it back is applied with what came after it", "[store]") {
    auto store = std::make_shared<ReadBackStore>();
    auto clock = fleet_clock();
    Replica a(store, clock);
    store->on_top = true;
    const auto decision = a.manager->manual_advance("alice", "", std::nullopt, std::nullopt, "op");
    CHECK(decision.success);
    CHECK(a.manager->version() == 3);
    CHECK(a.manager->snapshot().transitions.back().op == "someone-else");
}

TEST_CASE("a document read before this replica's own commit is not a regression", "[store]") {
    auto store = std::make_shared<MemoryStore>();
    auto clock = fleet_clock();
    Replica a(store, clock);
    const std::string read_before = *store->stored();     // a follower's read at version 1...
    REQUIRE(a.manager->manual_advance("alice").success);  // ...then this replica commits
    CHECK_FALSE(a.manager->follow(read_before, 1));
    CHECK(a.manager->regressed().empty());
    // Read when the replica already held version 2, the same document is a regression.
    CHECK_FALSE(a.manager->follow(read_before, 2));
    CHECK_FALSE(a.manager->regressed().empty());
}

TEST_CASE("a lost step replaced by another at the same version is a regression", "[store]") {
    auto store = std::make_shared<MemoryStore>();
    auto clock = fleet_clock();
    Replica a(store, clock);
    Replica c(store, clock);
    const std::string version1 = *store->stored();
    REQUIRE(a.manager->manual_advance("alice").success);   // version 2, answered to alice
    store->put(1, version1);                               // a failover loses it
    REQUIRE(c.manager->manual_rollback("carol").success);  // c never saw it: aborts as version 2
    CHECK_FALSE(a.manager->follow(*store->stored()));
    CHECK_FALSE(a.manager->regressed().empty());
    const auto before = store->stored();
    CHECK_THROWS_AS(a.manager->manual_advance("alice"), StateRegressed);
    CHECK(store->stored() == before);
    // Moved on further, the history still lacks alice's step: still a regression.
    REQUIRE(c.manager->manual_advance("carol").success);
    CHECK_FALSE(a.manager->follow(*store->stored()));
    CHECK_FALSE(a.manager->regressed().empty());
    CHECK(a.manager->version() == 2);
}

// -- Boundaries: each rule at its limit, on both sides ---------------------------------------

TEST_CASE("boundary: another incarnation is named as such, at a higher version too",
          "[store][boundary]") {
    // A store started afresh and moved past the version this replica saw: the incarnation
    // tells it from this replica's rollout, not the version or the history.
    auto store = std::make_shared<MemoryStore>();
    auto clock = fleet_clock();
    Replica a(store, clock);
    REQUIRE(a.manager->manual_advance("alice").success);  // version 2
    const std::string seen = a.manager->snapshot().incarnation;
    store->forget();
    Replica fresh(store, clock);
    for (int i = 0; i < 3; ++i) REQUIRE(fresh.manager->manual_advance("bob").success);
    REQUIRE(fresh.manager->version() == 4);
    const std::string other = fresh.manager->snapshot().incarnation;
    CHECK_FALSE(a.manager->follow(*store->stored()));
    CHECK_THAT(a.manager->regressed(), Catch::Contains("holds incarnation " + other) &&
                                           Catch::Contains("not incarnation " + seen));
    CHECK(a.manager->version() == 2);
}

TEST_CASE("boundary: a step that has left the kept history cannot be told, and is not asked",
          "[store][boundary]") {
    // A replica at version 2 learns of a state 99 or 100 moves on. At 99 its own step is the
    // oldest of the 100 kept, and is checked; at 100 it has just left them, so nothing is
    // left to check it against, and the state is taken.
    for (const int moves : {99, 100}) {
        auto store = std::make_shared<MemoryStore>();
        auto clock = fleet_clock();
        Replica a(store, clock, quick_stages());
        REQUIRE(a.manager->manual_advance("alice").success);  // version 2
        Replica b(store, clock, quick_stages());
        for (int i = 0; i < moves; ++i) {
            const bool up = b.manager->snapshot().position.stage_index == 0;
            REQUIRE((up ? b.manager->manual_advance("bob") : b.manager->manual_rollback("bob"))
                        .success);
        }
        REQUIRE(b.manager->version() == 2u + static_cast<std::uint64_t>(moves));
        CHECK(a.manager->follow(*store->stored()));
        CHECK(a.manager->version() == b.manager->version());
        CHECK(a.manager->regressed().empty());
    }
}

TEST_CASE("boundary: a history without operation ids has nothing to tell, and is taken",
          "[store][boundary]") {
    // Written by a release before operation ids: a replica holding such a step cannot tell
    // whether the next state's history is its own, so it takes it.
    auto store = std::make_shared<MemoryStore>();
    auto clock = fleet_clock();
    { Replica first(store, clock, quick_stages()); }  // stores version 1
    auto legacy = nlohmann::json::parse(*store->stored());
    for (auto& step : legacy["transitions"]) step.erase("op");
    store->put(1, legacy.dump());
    Replica a(store, clock, quick_stages());  // starts on the step without an id
    Replica b(store, clock, quick_stages());
    REQUIRE(b.manager->manual_advance("bob").success);  // version 2, its own step with an op
    auto next = nlohmann::json::parse(*store->stored());
    next["transitions"][0]["op"] = "another-op";  // the step at version 1, as told by others
    store->put(2, next.dump());
    CHECK(a.manager->follow(*store->stored()));
    CHECK(a.manager->version() == 2);
    CHECK(a.manager->regressed().empty());
}

TEST_CASE("boundary: only a manager with a shared store follows one", "[store][boundary]") {
    auto store = std::make_shared<MemoryStore>();
    auto clock = fleet_clock();
    Replica a(store, clock);
    const std::string document = *store->stored();
    RolloutManager::Options options;
    options.clock = clock;
    options.registry = std::make_shared<MetricsRegistry>();
    RolloutManager local(RolloutConfig::default_config(), options);  // no store, no file
    CHECK_THROWS_AS(local.follow(document), std::logic_error);
    CHECK_THROWS_AS(local.refresh(), std::logic_error);
    CHECK(a.manager->follow(document) == false);  // its own version: nothing new
}

namespace {

/// Loses the next `losses` commits to another replica that committed first (the stored state
/// one version on), and counts what the replica asks.
class LosingStore : public MemoryStore {
  public:
    std::optional<std::string> load() override {
        ++loads;
        return MemoryStore::load();
    }
    CommitResult commit(std::uint64_t version, const std::string& document,
                        bool automatic) override {
        ++attempts;
        if (losses > 0) {
            --losses;
            auto moved = nlohmann::json::parse(*stored());
            const auto on = moved["version"].get<std::uint64_t>() + 1;
            moved["version"] = on;
            moved["transitions"].push_back(moved["transitions"].back());
            moved["transitions"].back()["op"] = "other-" + std::to_string(on);
            put(on, moved.dump());
        }
        return MemoryStore::commit(version, document, automatic);
    }
    int losses = 0;
    int attempts = 0;
    int loads = 0;
};

/// Commits another replica's attempt of the same operation instead, and answers as a store that
/// lost the answer and read it back: the same version, told by that replica.
class OtherAttemptStore : public MemoryStore {
  public:
    CommitResult commit(std::uint64_t version, const std::string& document,
                        bool automatic) override {
        if (!other_attempt) return MemoryStore::commit(version, document, automatic);
        auto theirs = nlohmann::json::parse(document);
        theirs["transitions"].back()["actor"] = "bob";
        auto result = MemoryStore::commit(version, theirs.dump(), automatic);
        if (result.status == CommitStatus::Committed) result.current = theirs.dump();
        return result;
    }
    bool other_attempt = false;
};

}  // namespace

TEST_CASE("boundary: a move without a precondition is decided again up to 8 times",
          "[store][boundary]") {
    // Lost to other replicas 7 times, the 8th attempt commits; lost 8 times, the move answers
    // a conflict and changes nothing. Only a lost commit makes the replica read the store.
    for (const bool advance : {true, false}) {
        for (const int losses : {0, 7, 8}) {
            INFO((advance ? "advance, " : "rollback, ") << losses << " losses");
            auto store = std::make_shared<LosingStore>();
            auto clock = fleet_clock();
            Replica a(store, clock, quick_stages());
            REQUIRE(a.manager->manual_advance("alice").success);  // b, so both moves can go
            const auto before = a.manager->snapshot().position.stage_index;
            store->attempts = store->loads = 0;
            store->losses = losses;
            const Decision decision =
                advance ? a.manager->manual_advance("alice") : a.manager->manual_rollback("alice");
            CHECK(store->attempts == std::min(losses + 1, 8));
            CHECK(store->loads == std::min(losses, 7));
            if (losses < 8) {
                CHECK(decision.success);
                CHECK(a.manager->snapshot().position.stage_index != before);
            } else {
                CHECK(decision.action == DecisionAction::Conflict);
                CHECK_THAT(decision.message, Catch::StartsWith("Conflict: the rollout moved on"));
                CHECK(a.manager->snapshot().position.stage_index == before);
            }
        }
    }
}

TEST_CASE("boundary: a move with a precondition that loses its commit is not decided again",
          "[store][boundary]") {
    for (const bool advance : {true, false}) {
        INFO((advance ? "advance" : "rollback"));
        auto store = std::make_shared<LosingStore>();
        auto clock = fleet_clock();
        Replica a(store, clock, quick_stages());
        REQUIRE(a.manager->manual_advance("alice").success);
        store->attempts = 0;
        store->losses = 1;
        const Decision decision = advance ? a.manager->manual_advance("alice", "", 2)
                                          : a.manager->manual_rollback("alice", "", 2);
        CHECK(store->attempts == 1);
        CHECK(decision.action == DecisionAction::Conflict);
        CHECK_THAT(decision.message, Catch::StartsWith("Conflict: the rollout moved on"));
        CHECK(a.manager->version() == 3);  // what the other replica committed, followed
    }
}

TEST_CASE("boundary: a read taken before this replica's own commit counts when newer and its own",
          "[store][boundary]") {
    auto store = std::make_shared<MemoryStore>();
    auto clock = fleet_clock();
    Replica a(store, clock, quick_stages());
    Replica b(store, clock, quick_stages());
    REQUIRE(a.manager->manual_advance("alice").success);  // version 2, held by a
    const std::string own = *store->stored();
    // Read at version 1: the same version with another last step is not judged...
    auto other_step = nlohmann::json::parse(own);
    other_step["transitions"].back()["op"] = "another-op";
    CHECK_FALSE(a.manager->follow(other_step.dump(), 1));
    CHECK(a.manager->regressed().empty());
    // ... nor another incarnation further on ...
    auto foreign = nlohmann::json::parse(own);
    foreign["incarnation"] = "0000000000000000";
    foreign["version"] = 5;
    CHECK_FALSE(a.manager->follow(foreign.dump(), 1));
    CHECK(a.manager->regressed().empty());
    CHECK(a.manager->version() == 2);
    // ... but a newer state of its own lineage is taken.
    REQUIRE(b.manager->manual_advance("bob").success);  // version 3
    CHECK(a.manager->follow(*store->stored(), 1));
    CHECK(a.manager->version() == 3);
    CHECK(a.manager->regressed().empty());
}

TEST_CASE("boundary: a commit read back at its own version holds the attempt that is stored",
          "[store][boundary]") {
    auto store = std::make_shared<OtherAttemptStore>();
    auto clock = fleet_clock();
    Replica a(store, clock);
    store->other_attempt = true;
    const auto decision = a.manager->manual_advance("alice", "", std::nullopt, std::nullopt, "op");
    CHECK(decision.success);
    CHECK(a.manager->version() == 2);
    CHECK(a.manager->snapshot().transitions.back().actor == "bob");
    CHECK(a.manager->snapshot().transitions.back().op == "op");
    store->other_attempt = false;
    REQUIRE(a.manager->manual_advance("alice").success);  // answered without a read back
    CHECK(a.manager->snapshot().transitions.back().actor == "alice");
}
