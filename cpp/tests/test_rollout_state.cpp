#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "driftgate/rollout_state.hpp"

using driftgate::PersistedRollout;
using driftgate::RolloutConfig;
using driftgate::RolloutState;
using driftgate::StateError;
using driftgate::StateFile;

namespace {

struct TempDir {
    TempDir() {
        char pattern[] = "/tmp/driftgate-test-XXXXXX";
        path = mkdtemp(pattern);
    }
    ~TempDir() { std::filesystem::remove_all(path); }
    std::string file(const std::string& name) const { return path + "/" + name; }
    std::string path;
};

void write(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

std::string read(const std::string& path) {
    std::ifstream in(path);
    return {std::istreambuf_iterator<char>(in), {}};
}

}  // namespace

TEST_CASE("a missing file loads as nothing", "[rollout_state]") {
    TempDir dir;
    StateFile file(dir.file("state.json"), RolloutConfig::default_config().stages());
    CHECK_FALSE(file.load().has_value());
}

TEST_CASE("a saved state loads back", "[rollout_state]") {
    TempDir dir;
    StateFile file(dir.file("state.json"), RolloutConfig::default_config().stages());
    PersistedRollout rollout;
    rollout.stage_index = 2;
    rollout.started_at = 1700000000.25;
    rollout.state = RolloutState::Active;
    rollout.version = 7;
    rollout.transitions = {{1700000000.25, "ops", "quarter", "half", "manual advance"}};
    file.save(rollout);
    const auto loaded = file.load();
    REQUIRE(loaded.has_value());
    CHECK(loaded->stage_index == 2);
    CHECK(loaded->started_at == 1700000000.25);
    CHECK(loaded->version == 7);
    REQUIRE(loaded->transitions.size() == 1);
    CHECK(loaded->transitions[0].actor == "ops");
    CHECK(read(file.path()).find("\"started_at\": \"2023-11-14T22:13:20.250000Z\"") !=
          std::string::npos);
    // No temp file is left behind.
    CHECK(std::distance(std::filesystem::directory_iterator(dir.path),
                        std::filesystem::directory_iterator{}) == 1);
}

TEST_CASE("only the last 100 transitions are kept", "[rollout_state]") {
    TempDir dir;
    StateFile file(dir.file("state.json"), RolloutConfig::default_config().stages());
    PersistedRollout rollout;
    for (int i = 0; i < 150; ++i) {
        rollout.transitions.push_back({1.0 * i, "a", "canary", "quarter", std::to_string(i)});
    }
    file.save(rollout);
    const auto loaded = file.load();
    REQUIRE(loaded->transitions.size() == 100);
    CHECK(loaded->transitions.front().reason == "50");
}

TEST_CASE("corrupt files are refused and left untouched", "[rollout_state]") {
    TempDir dir;
    const std::string path = dir.file("state.json");
    StateFile file(path, RolloutConfig::default_config().stages());
    for (const std::string& text : {std::string("{not json"), std::string("[]"),
                                    std::string("{\"schema_version\": 1}"), std::string("")}) {
        write(path, text);
        CHECK_THROWS_AS(file.load(), StateError);
        CHECK_THROWS_WITH(file.load(), Catch::Contains(path));
        CHECK(read(path) == text);
    }
}

TEST_CASE("a file for another stage list is refused", "[rollout_state]") {
    TempDir dir;
    const std::string path = dir.file("state.json");
    StateFile(path, RolloutConfig::default_config().stages()).save(PersistedRollout{});
    auto other = RolloutConfig::default_config().stages();
    other.pop_back();
    StateFile mismatched(path, other);
    CHECK_THROWS_WITH(mismatched.load(), Catch::Contains("another stage list"));
}

TEST_CASE("a write that fails keeps the old file", "[rollout_state]") {
    TempDir dir;
    StateFile file(dir.file("missing-folder/state.json"), RolloutConfig::default_config().stages());
    CHECK_THROWS_WITH(file.save(PersistedRollout{}), Catch::Contains("could not be written"));
}
