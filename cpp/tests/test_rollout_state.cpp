#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "driftgate/rollout_state.hpp"

using driftgate::PersistedRollout;
using driftgate::RolloutState;
using driftgate::StagePlan;
using driftgate::StateError;
using driftgate::StateFile;
using driftgate::Transition;

namespace {

struct TempDir {
    TempDir() {
        char pattern[] = "/tmp/driftgate-test-XXXXXX";
        path = mkdtemp(pattern);
    }
    ~TempDir() { std::filesystem::remove_all(path); }
    std::string file(const std::string& name) const { return path + "/" + name; }
    std::vector<std::string> names() const {
        std::vector<std::string> out;
        for (const auto& entry : std::filesystem::directory_iterator(path)) {
            out.push_back(entry.path().filename().string());
        }
        return out;
    }
    std::string path;
};

std::shared_ptr<const StagePlan> default_plan() {
    return std::make_shared<const StagePlan>(StagePlan::default_stages());
}

void write(const std::string& path, const std::string& text) {
    std::ofstream(path, std::ios::binary) << text;
}

std::string read(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), {}};
}

/// A rollout at "half" after a start and two manual advances.
PersistedRollout half_rollout() {
    PersistedRollout rollout;
    rollout.stage_index = 2;
    rollout.started_at = 1700000000.25;
    rollout.state = RolloutState::Active;
    rollout.version = 3;
    rollout.transitions = {{1699990000.0, "system", "", "canary", "rollout started", ""},
                           {1699995000.5, "ops", "canary", "quarter", "manual advance", ""},
                           {1700000000.25, "ops", "quarter", "half", "manual advance", ""}};
    return rollout;
}

std::string transition_json(const std::string& to, const std::string& actor = "ops",
                            const std::string& extra = "") {
    return R"({"time": "2023-11-14T22:13:20.250000Z", "actor": ")" + actor +
           R"(", "from": "quarter", "to": ")" + to + R"(", "reason": "manual advance")" + extra +
           "}";
}

/// The raw JSON fields of a state file, each replaceable by a test.
struct RawState {
    std::string schema_version = "1";
    std::string stage_index = "2";
    std::string stage_name = R"("half")";
    std::string started_at = R"("2023-11-14T22:13:20.250000Z")";
    std::string state = R"("active")";
    std::string version = "3";
    std::string fingerprint = '"' + default_plan()->fingerprint() + '"';
    std::string transitions = "[" + transition_json("half") + "]";
    std::string extra;  // more top-level fields, each with a leading comma

    std::string text() const {
        return "{\"schema_version\": " + schema_version + ", \"stage_index\": " + stage_index +
               ", \"stage_name\": " + stage_name + ", \"started_at\": " + started_at +
               ", \"state\": " + state + ", \"version\": " + version +
               ", \"stages_fingerprint\": " + fingerprint + ", \"transitions\": " + transitions +
               extra + "}\n";
    }
};

struct Refused {
    std::string what;  // the case, for the failure report
    std::function<void(RawState&)> change;
    std::string problem;  // part of the expected message
};

bool printable_ascii(const std::string& text) {
    for (unsigned char c : text) {
        if (c < 32 || c >= 127) return false;
    }
    return true;
}

/// Collects the names of files created in `folder` while it lives.
struct CreatedFiles {
    explicit CreatedFiles(const std::string& folder) {
        fd = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
        REQUIRE(fd >= 0);
        REQUIRE(::inotify_add_watch(fd, folder.c_str(), IN_CREATE) >= 0);
    }
    ~CreatedFiles() { ::close(fd); }

    std::vector<std::string> names() {
        std::vector<std::string> out;
        alignas(inotify_event) char buffer[1 << 14];
        for (;;) {
            const ssize_t n = ::read(fd, buffer, sizeof buffer);
            if (n <= 0) break;
            for (ssize_t at = 0; at < n;) {
                const auto* event = reinterpret_cast<const inotify_event*>(buffer + at);
                if (event->len > 0) out.emplace_back(event->name);
                at += static_cast<ssize_t>(sizeof(inotify_event) + event->len);
            }
        }
        return out;
    }

    int fd;
};

}  // namespace

TEST_CASE("a missing file loads as nothing", "[rollout_state]") {
    TempDir dir;
    StateFile file(dir.file("state.json"), default_plan());
    CHECK_FALSE(file.load().has_value());
}

TEST_CASE("a saved state loads back", "[rollout_state]") {
    TempDir dir;
    StateFile file(dir.file("state.json"), default_plan());
    PersistedRollout rollout;
    rollout.stage_index = 2;
    rollout.started_at = 1700000000.25;
    rollout.state = RolloutState::Active;
    rollout.version = 7;
    rollout.transitions = {{1700000000.25, "ops", "quarter", "half", "manual advance", ""}};
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
    CHECK(dir.names() == std::vector<std::string>{"state.json"});
}

TEST_CASE("a valid file round-trips field for field and byte for byte", "[rollout_state]") {
    TempDir dir;
    StateFile file(dir.file("state.json"), default_plan());
    const PersistedRollout rollout = half_rollout();
    file.save(rollout);
    const std::string written = read(file.path());
    const auto loaded = file.load();
    REQUIRE(loaded.has_value());
    CHECK(loaded->stage_index == rollout.stage_index);
    CHECK(loaded->started_at == rollout.started_at);
    CHECK(loaded->state == rollout.state);
    CHECK(loaded->version == rollout.version);
    REQUIRE(loaded->transitions.size() == rollout.transitions.size());
    for (std::size_t i = 0; i < rollout.transitions.size(); ++i) {
        const Transition& want = rollout.transitions[i];
        const Transition& got = loaded->transitions[i];
        CHECK(got.time == want.time);
        CHECK(got.actor == want.actor);
        CHECK(got.from == want.from);
        CHECK(got.to == want.to);
        CHECK(got.reason == want.reason);
    }
    file.save(*loaded);
    CHECK(read(file.path()) == written);
}

TEST_CASE("the hand-written test file is itself valid", "[rollout_state]") {
    // Every refusal below changes one field of this file, so each one is refused for that.
    TempDir dir;
    const std::string path = dir.file("state.json");
    write(path, RawState{}.text());
    const auto loaded = StateFile(path, default_plan()).load();
    REQUIRE(loaded.has_value());
    CHECK(loaded->stage_index == 2);
    CHECK(loaded->version == 3);
}

TEST_CASE("aborted at the first stage and completed at the final one load", "[rollout_state]") {
    TempDir dir;
    const std::string path = dir.file("state.json");
    RawState aborted;
    aborted.stage_index = "0";
    aborted.stage_name = R"("canary")";
    aborted.state = R"("aborted")";
    aborted.transitions = "[" + transition_json("aborted") + "]";
    write(path, aborted.text());
    CHECK(StateFile(path, default_plan()).load()->state == RolloutState::Aborted);
    RawState completed;
    completed.stage_index = "4";
    completed.stage_name = R"("full")";
    completed.state = R"("completed")";
    completed.transitions = "[" + transition_json("full") + "]";
    write(path, completed.text());
    CHECK(StateFile(path, default_plan()).load()->state == RolloutState::Completed);
}

TEST_CASE("only the last 100 transitions are kept", "[rollout_state]") {
    TempDir dir;
    StateFile file(dir.file("state.json"), default_plan());
    PersistedRollout rollout;
    rollout.version = 150;
    for (int i = 0; i < 150; ++i) {
        rollout.transitions.push_back({1.0 * i, "a", "quarter", "canary", std::to_string(i), ""});
    }
    file.save(rollout);
    const auto loaded = file.load();
    REQUIRE(loaded.has_value());
    REQUIRE(loaded->transitions.size() == 100);
    CHECK(loaded->transitions.front().reason == "50");
    CHECK(loaded->transitions.back().reason == "149");
}

TEST_CASE("corrupt files are refused and left untouched", "[rollout_state]") {
    TempDir dir;
    const std::string path = dir.file("state.json");
    StateFile file(path, default_plan());
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
    StateFile(path, default_plan()).save(half_rollout());
    auto other = StagePlan::default_stages();
    other.pop_back();
    StateFile mismatched(path, std::make_shared<const StagePlan>(other));
    CHECK_THROWS_WITH(mismatched.load(), Catch::Contains("another stage list"));
}

TEST_CASE("files no rollout could have written are refused by name and left untouched",
          "[rollout_state]") {
    const std::vector<Refused> cases = {
        // Times.
        {"a 400-digit fraction",
         [](RawState& s) {
             s.started_at = "\"2023-11-14T22:13:20." + std::string(400, '1') + "Z\"";
         },
         "ISO 8601"},
        {"year 0", [](RawState& s) { s.started_at = R"("0000-01-01T00:00:00Z")"; }, "ISO 8601"},
        {"year 10000", [](RawState& s) { s.started_at = R"("10000-01-01T00:00:00Z")"; },
         "ISO 8601"},
        {"second 60", [](RawState& s) { s.started_at = R"("2023-11-14T22:13:60Z")"; }, "ISO 8601"},
        {"February 30", [](RawState& s) { s.started_at = R"("2023-02-30T00:00:00Z")"; },
         "ISO 8601"},
        {"a transition time that is not a time",
         [](RawState& s) {
             s.transitions = R"([{"time": "yesterday", "actor": "ops", "from": "quarter", )"
                             R"("to": "half", "reason": "r"}])";
         },
         "ISO 8601"},
        // States no rollout reaches.
        {"completed at a stage that is not the last",
         [](RawState& s) { s.state = R"("completed")"; }, "no rollout reaches"},
        {"aborted at a later stage than the first", [](RawState& s) { s.state = R"("aborted")"; },
         "no rollout reaches"},
        {"active at the final stage",
         [](RawState& s) {
             s.stage_index = "4";
             s.stage_name = R"("full")";
             s.transitions = "[" + transition_json("full") + "]";
         },
         "no rollout reaches"},
        {"an unknown state", [](RawState& s) { s.state = R"("paused")"; }, "unknown state"},
        // Numbers of the wrong kind.
        {"schema_version 1.9", [](RawState& s) { s.schema_version = "1.9"; },
         "has schema_version '1.9'"},
        {"schema_version true", [](RawState& s) { s.schema_version = "true"; },
         "has schema_version 'true'"},
        {"schema_version 2^32 + 1", [](RawState& s) { s.schema_version = "4294967297"; },
         "has schema_version '4294967297'"},
        {"schema_version as text", [](RawState& s) { s.schema_version = R"("1")"; },
         "has schema_version '\"1\"'"},
        {"stage_index 1.7", [](RawState& s) { s.stage_index = "1.7"; }, "has stage_index '1.7'"},
        {"stage_index -1", [](RawState& s) { s.stage_index = "-1"; }, "has stage_index '-1'"},
        {"stage_index past the last stage", [](RawState& s) { s.stage_index = "5"; },
         "has stage_index '5'"},
        {"a stage name that is not the index's", [](RawState& s) { s.stage_name = R"("quarter")"; },
         "names stage"},
        {"version -1", [](RawState& s) { s.version = "-1"; }, "has version '-1'"},
        {"version 0", [](RawState& s) { s.version = "0"; }, "has version 0"},
        {"version 2^53", [](RawState& s) { s.version = "9007199254740992"; },
         "has version '9007199254740992'"},
        // Histories.
        {"transitions null", [](RawState& s) { s.transitions = "null"; }, "transitions"},
        {"transitions an object", [](RawState& s) { s.transitions = "{}"; }, "transitions"},
        {"101 transitions",
         [](RawState& s) {
             s.version = "1000";
             s.transitions = "[";
             for (int i = 0; i < 101; ++i) {
                 s.transitions += (i > 0 ? ", " : "") + transition_json("half");
             }
             s.transitions += "]";
         },
         "at most 100"},
        {"more transitions than versions",
         [](RawState& s) {
             s.version = "1";
             s.transitions = "[" + transition_json("half") + ", " + transition_json("half") + "]";
         },
         "2 transitions but version 1"},
        {"a transition to a stage that does not exist",
         [](RawState& s) { s.transitions = "[" + transition_json("eighth") + "]"; },
         "does not have"},
        {"an actor with a space",
         [](RawState& s) { s.transitions = "[" + transition_json("half", "ops team") + "]"; },
         "'ops team'"},
        {"an unknown field in a transition",
         [](RawState& s) {
             s.transitions = "[" + transition_json("half", "ops", R"(, "note": "x")") + "]";
         },
         "'note'"},
        {"a history that ends elsewhere than the position",
         [](RawState& s) { s.transitions = "[" + transition_json("quarter") + "]"; },
         "ends its history at 'quarter'"},
        // Anything else.
        {"an unknown top-level field", [](RawState& s) { s.extra = R"(, "owner": "me")"; },
         "'owner'"},
    };
    TempDir dir;
    const std::string path = dir.file("state.json");
    const StateFile file(path, default_plan());
    for (const Refused& refused : cases) {
        INFO(refused.what);
        RawState raw;
        refused.change(raw);
        const std::string text = raw.text();
        write(path, text);
        CHECK_THROWS_AS(file.load(), StateError);
        CHECK_THROWS_WITH(file.load(), Catch::Contains(path) && Catch::Contains(refused.problem));
        CHECK(read(path) == text);
    }
}

TEST_CASE("boundary: a file without one of its fields is refused naming that field",
          "[rollout_state][boundary]") {
    TempDir dir;
    const std::string path = dir.file("state.json");
    const StateFile file(path, default_plan());
    for (const std::string name : {"schema_version", "stage_index", "stage_name", "started_at",
                                   "state", "version", "stages_fingerprint", "transitions"}) {
        INFO(name);
        auto document = nlohmann::json::parse(RawState().text());
        REQUIRE(document.erase(name) == 1);
        const std::string text = document.dump();
        write(path, text);
        CHECK_THROWS_WITH(file.load(), Catch::Contains("has no field '" + name + "'"));
        CHECK(read(path) == text);
    }
}

TEST_CASE("a file with bytes that are not UTF-8 is refused with a printable message",
          "[rollout_state]") {
    TempDir dir;
    const std::string path = dir.file("state.json");
    RawState raw;
    raw.transitions = "[" + transition_json("half", "ops", ", \"extra\xff\xfe\x80\": 1") + "]";
    std::string text = raw.text();
    text.replace(text.find("manual advance"), 14, "manual \xc3\x28 advance");
    write(path, text);
    const StateFile file(path, default_plan());
    try {
        file.load();
        FAIL("a file with invalid UTF-8 loaded");
    } catch (const StateError& error) {
        const std::string message = error.what();
        CHECK_THAT(message, Catch::Contains(path));
        CHECK(printable_ascii(message));
    }
    CHECK(read(path) == text);
}

TEST_CASE("a file over 1 MiB is refused even when it is valid JSON", "[rollout_state]") {
    TempDir dir;
    const std::string path = dir.file("state.json");
    std::string text = RawState{}.text();
    // The limit as documented, not the constant: a changed constant must fail here.
    text.append(std::size_t{1048576} + 1 - text.size(), ' ');
    write(path, text);
    const StateFile file(path, default_plan());
    CHECK_THROWS_WITH(file.load(), Catch::Contains(path) && Catch::Contains("larger than"));
    CHECK(read(path) == text);
    // One byte less is read.
    text.pop_back();
    write(path, text);
    CHECK(file.load().has_value());
}

TEST_CASE("a symbolic link to a valid file is refused and left as it was", "[rollout_state]") {
    TempDir dir;
    const std::string target = dir.file("real.json");
    const std::string link = dir.file("state.json");
    StateFile(target, default_plan()).save(half_rollout());
    const std::string text = read(target);
    std::filesystem::create_symlink(target, link);
    const StateFile file(link, default_plan());
    CHECK_THROWS_AS(file.load(), StateError);
    CHECK_THROWS_WITH(file.load(), Catch::Contains(link) && Catch::Contains("symbolic link"));
    CHECK(std::filesystem::is_symlink(link));
    CHECK(std::filesystem::read_symlink(link) == target);
    CHECK(read(target) == text);
}

// -- What the writer writes -----------------------------------------------------------------

TEST_CASE("the last version and time a state holds are written and read back", "[rollout_state]") {
    TempDir dir;
    StateFile file(dir.file("state.json"), default_plan());
    PersistedRollout rollout = half_rollout();
    rollout.version = StateFile::kMaxVersion;
    // The last double before the year 10000: written to the microsecond, still 9999.
    const double last = std::nextafter(StateFile::kEndOfTime, 0.0);
    rollout.started_at = last;
    rollout.transitions.back().time = last;
    file.save(rollout);
    const auto loaded = file.load();
    REQUIRE(loaded.has_value());
    CHECK(loaded->version == StateFile::kMaxVersion);
    CHECK(read(file.path()).find("\"started_at\": \"9999-12-31T23:59:59.999969Z\"") !=
          std::string::npos);
}

TEST_CASE("a state the reader would refuse is never written and the file stays",
          "[rollout_state]") {
    TempDir dir;
    StateFile file(dir.file("state.json"), default_plan());
    file.save(half_rollout());
    const std::string before = read(file.path());
    struct Case {
        std::string what;
        std::function<void(PersistedRollout&)> change;
        std::string named;  // the value the message must name
    };
    const std::vector<Case> cases = {
        {"a version past 2^53-1", [](auto& r) { r.version = StateFile::kMaxVersion + 1; },
         "version 9007199254740992"},
        {"version 0", [](auto& r) { r.version = 0; }, "version 0"},
        {"a stage start in the year 10000", [](auto& r) { r.started_at = StateFile::kEndOfTime; },
         "a stage start 253402300800"},
        {"a transition in the year 10000",
         [](auto& r) { r.transitions.front().time = StateFile::kEndOfTime + 1; },
         "a transition time 253402300801"},
        {"a stage start before 1970", [](auto& r) { r.started_at = -1; }, "a stage start -1"},
        {"a time that is not a number",
         [](auto& r) { r.started_at = std::numeric_limits<double>::quiet_NaN(); },
         "a stage start nan"},
    };
    CreatedFiles created(dir.path);
    for (const Case& c : cases) {
        INFO(c.what);
        PersistedRollout rollout = half_rollout();
        c.change(rollout);
        CHECK_THROWS_AS(file.save(rollout), StateError);
        CHECK_THROWS_WITH(file.save(rollout),
                          Catch::Contains(c.named) && Catch::Contains("nothing was written"));
        CHECK_THROWS_AS(driftgate::encode_rollout(rollout, *default_plan()), StateError);
        CHECK(read(file.path()) == before);
    }
    // Refused before a temp file was even made.
    CHECK(created.names().empty());
}

TEST_CASE("a time at the very end of 9999 loads but cannot be written back", "[rollout_state]") {
    // Read to the tenth of a microsecond, 23:59:59.9999999 rounds to the year 10000 as a
    // double: the reader takes it, and the writer refuses to write it rather than write a file
    // the next start would refuse.
    TempDir dir;
    StateFile file(dir.file("state.json"), default_plan());
    RawState raw;
    raw.started_at = R"("9999-12-31T23:59:59.9999999Z")";
    raw.transitions =
        R"([{"time": "9999-12-31T23:59:59.9999999Z", "actor": "ops", "from": "quarter", )"
        R"("to": "half", "reason": "manual advance"}])";
    write(file.path(), raw.text());
    const auto loaded = file.load();
    REQUIRE(loaded.has_value());
    CHECK_THROWS_WITH(file.save(*loaded), Catch::Contains("253402300800"));
    CHECK(read(file.path()) == raw.text());
}

// -- Durability -----------------------------------------------------------------------------

TEST_CASE("a write that fails keeps the old file", "[rollout_state]") {
    TempDir dir;
    StateFile file(dir.file("missing-folder/state.json"), default_plan());
    CHECK_THROWS_WITH(file.save(half_rollout()), Catch::Contains("could not be written"));
}

TEST_CASE("a save into a folder that does not exist names the temp file step", "[rollout_state]") {
    TempDir dir;
    const std::string path = dir.file("missing-folder/state.json");
    StateFile file(path, default_plan());
    CHECK_THROWS_AS(file.save(half_rollout()), StateError);
    CHECK_THROWS_WITH(file.save(half_rollout()),
                      Catch::Contains(path) && Catch::Contains("create temp file"));
    try {
        file.save(half_rollout());
    } catch (const StateError& error) {
        CHECK_FALSE(error.replaced());
    }
}

TEST_CASE("each save writes a temp file of its own name, never a stale one's", "[rollout_state]") {
    TempDir dir;
    const std::string path = dir.file("state.json");
    const std::string pid = std::to_string(::getpid());
    // What a killed predecessor with this pid may have left, by the old naming and the new.
    const std::vector<std::string> stale = {"state.json.tmp." + pid,
                                            "state.json.tmp." + pid + ".0000000000000000"};
    for (const auto& name : stale) write(dir.file(name), "left by a dead writer");
    StateFile file(path, default_plan());
    CreatedFiles created(dir.path);
    file.save(half_rollout());
    file.save(half_rollout());
    const std::vector<std::string> temps = created.names();
    REQUIRE(temps.size() == 2);
    CHECK(temps[0] != temps[1]);
    for (const auto& name : temps) {
        CHECK_THAT(name, Catch::StartsWith("state.json.tmp." + pid + "."));
        for (const auto& old : stale) CHECK(name != old);
    }
    for (const auto& name : stale) CHECK(read(dir.file(name)) == "left by a dead writer");
}

TEST_CASE("stale temp files are removed, ones a live writer holds are kept", "[rollout_state]") {
    TempDir dir;
    const std::string path = dir.file("state.json");
    const std::string stale = dir.file("state.json.tmp.4242.00000000deadbeef");
    const std::string live = dir.file("state.json.tmp.4243.00000000cafef00d");
    const std::string other = dir.file("other.json.tmp.4242.00000000deadbeef");
    write(stale, "half written");
    write(live, "being written");
    write(other, "another file's");
    const int fd = ::open(live.c_str(), O_RDONLY | O_CLOEXEC);
    REQUIRE(fd >= 0);
    REQUIRE(::flock(fd, LOCK_EX) == 0);
    StateFile file(path, default_plan());
    CHECK(file.remove_stale_temp_files() == 1);
    CHECK_FALSE(std::filesystem::exists(stale));
    CHECK(read(live) == "being written");
    CHECK(read(other) == "another file's");
    ::close(fd);
    // Once its writer is gone, it is stale too.
    CHECK(file.remove_stale_temp_files() == 1);
    CHECK_FALSE(std::filesystem::exists(live));
    CHECK(std::filesystem::exists(other));
}

TEST_CASE("a save keeps the mode the file was given", "[rollout_state]") {
    TempDir dir;
    const std::string path = dir.file("state.json");
    StateFile file(path, default_plan());
    file.save(half_rollout());
    REQUIRE(::chmod(path.c_str(), 0600) == 0);
    file.save(half_rollout());
    struct stat info {};
    REQUIRE(::stat(path.c_str(), &info) == 0);
    CHECK((info.st_mode & 07777) == 0600);
    REQUIRE(::chmod(path.c_str(), 0640) == 0);
    file.save(half_rollout());
    REQUIRE(::stat(path.c_str(), &info) == 0);
    CHECK((info.st_mode & 07777) == 0640);
}

TEST_CASE("a save to a symbolic link throws and leaves the link and its target",
          "[rollout_state]") {
    TempDir dir;
    const std::string target = dir.file("real.json");
    const std::string link = dir.file("state.json");
    PersistedRollout before = half_rollout();
    StateFile(target, default_plan()).save(before);
    const std::string text = read(target);
    std::filesystem::create_symlink(target, link);
    PersistedRollout after = before;
    after.version = 4;
    after.transitions.push_back({1700000001.0, "ops", "half", "most", "manual advance", ""});
    after.stage_index = 3;
    const StateFile file(link, default_plan());
    CHECK_THROWS_AS(file.save(after), StateError);
    CHECK_THROWS_WITH(file.save(after), Catch::Contains(link) && Catch::Contains("symbolic link"));
    CHECK(std::filesystem::is_symlink(link));
    CHECK(std::filesystem::read_symlink(link) == target);
    CHECK(read(target) == text);
    CHECK(dir.names().size() == 2);  // no temp file left behind
}

TEST_CASE("a path with a NUL character is refused", "[rollout_state]") {
    TempDir dir;
    const std::string path = dir.file("state") + std::string("\0.json", 6);
    CHECK_THROWS_AS(StateFile(path, default_plan()), std::invalid_argument);
    CHECK_THROWS_WITH(StateFile(path, default_plan()), Catch::Contains("NUL"));
    CHECK_THROWS_AS(StateFile("", default_plan()), std::invalid_argument);
}

TEST_CASE("boundary: a reason keeps the printable ASCII from space to tilde, nothing past them",
          "[rollout_state][boundary]") {
    // 31 and 127 (DEL) are the control characters on either side of the printable range.
    CHECK(driftgate::clean_reason(std::string("\x1f \x7e\x7f", 4)) == "? ~?");
}

TEST_CASE("reasons are cut to 200 printable characters", "[rollout_state]") {
    CHECK(driftgate::clean_reason("bad\ncanary\x01") == "bad?canary?");
    CHECK(driftgate::clean_reason(std::string(300, 'x')).size() == 200);
    CHECK(driftgate::clean_reason("caf\xc3\xa9") == "caf??");
}

TEST_CASE("actors are role names, not free text", "[rollout_state]") {
    CHECK_NOTHROW(driftgate::validate_actor("ops:alice.b-1_x"));
    CHECK_THROWS_WITH(driftgate::validate_actor("ops team"), Catch::Contains("'ops team'"));
    CHECK_THROWS_AS(driftgate::validate_actor(""), std::invalid_argument);
    CHECK_THROWS_AS(driftgate::validate_actor(std::string(65, 'a')), std::invalid_argument);
}

TEST_CASE("incarnation, restore generation and operation ids round-trip and are checked",
          "[rollout_state]") {
    const auto plan = default_plan();
    PersistedRollout rollout = half_rollout();
    rollout.incarnation = "0123456789abcdef";
    rollout.restore_generation = 2;
    rollout.transitions.back().op = "op-7";
    const std::string text = driftgate::encode_rollout(rollout, *plan);
    const auto back = driftgate::decode_rollout(text, *plan, "doc", "fix it");
    CHECK(back.incarnation == "0123456789abcdef");
    CHECK(back.restore_generation == 2);
    CHECK(back.transitions.back().op == "op-7");
    CHECK(back.transitions.front().op.empty());
    CHECK(driftgate::entity_tag(back.incarnation, back.version) == "0123456789abcdef.3");
    CHECK(driftgate::entity_tag("", 3) == "3");
    // Written before incarnations existed: loads with none.
    rollout.incarnation.clear();
    const auto legacy = driftgate::decode_rollout(driftgate::encode_rollout(rollout, *plan), *plan,
                                                  "doc", "fix it");
    CHECK(legacy.incarnation.empty());
    CHECK(legacy.restore_generation == 0);
    auto refused = [&](const std::string& from, const std::string& to) {
        std::string bad = text;
        bad.replace(bad.find(from), from.size(), to);
        CHECK_THROWS_AS(driftgate::decode_rollout(bad, *plan, "doc", "fix it"),
                        driftgate::StateError);
    };
    refused(R"("incarnation": "0123456789abcdef")", R"("incarnation": "has space")");
    refused(R"("incarnation": "0123456789abcdef")", R"("incarnation": 7)");
    refused(R"("incarnation": "0123456789abcdef",)", "");
    refused(R"("restore_generation": 2)", R"("restore_generation": -1)");
    refused(R"("op": "op-7")", R"("op": "")");
    refused(R"("op": "op-7")", R"("op": 7)");
}

// -- Boundaries: each rule at its limit, on both sides ---------------------------------------

TEST_CASE("boundary: a state holds times from the first instant of 1970 on",
          "[rollout_state][boundary]") {
    const auto plan = default_plan();
    PersistedRollout rollout = half_rollout();
    rollout.started_at = 0.0;
    rollout.transitions.front().time = 0.0;
    const std::string text = driftgate::encode_rollout(rollout, *plan);
    CHECK(text.find("\"started_at\": \"1970-01-01T00:00:00.000000Z\"") != std::string::npos);
    CHECK(driftgate::decode_rollout(text, *plan, "doc", "fix it").started_at == 0.0);
    rollout.started_at = std::nextafter(0.0, -1.0);
    CHECK_THROWS_AS(driftgate::encode_rollout(rollout, *plan), StateError);
}

TEST_CASE("boundary: the times checked before a write are those of the last 100 steps",
          "[rollout_state][boundary]") {
    const auto plan = default_plan();
    PersistedRollout rollout = half_rollout();
    rollout.version = 150;
    rollout.transitions.clear();
    for (int i = 0; i < 150; ++i) {
        rollout.transitions.push_back({1700000000.0 + i, "ops", "half", "half", "r", ""});
    }
    // The 50 oldest are not written, so their times do not matter...
    rollout.transitions[49].time = -1.0;
    const auto back =
        driftgate::decode_rollout(driftgate::encode_rollout(rollout, *plan), *plan, "doc", "x");
    REQUIRE(back.transitions.size() == 100);
    CHECK(back.transitions.front().time == 1700000050.0);
    // ...while each of the 100 written is checked, the oldest of them and the newest.
    for (std::size_t at : {std::size_t{50}, std::size_t{149}}) {
        PersistedRollout bad = rollout;
        bad.transitions[at].time = StateFile::kEndOfTime;
        CHECK_THROWS_WITH(driftgate::encode_rollout(bad, *plan),
                          Catch::Contains("a transition time 253402300800"));
    }
    // A short history is checked from its first step.
    PersistedRollout short_one = half_rollout();
    short_one.transitions.front().time = -1.0;
    CHECK_THROWS_WITH(driftgate::encode_rollout(short_one, *plan),
                      Catch::Contains("a transition time -1"));
}

TEST_CASE("boundary: a state written with exactly 100 steps keeps all of them",
          "[rollout_state][boundary]") {
    const auto plan = default_plan();
    PersistedRollout rollout = half_rollout();
    rollout.version = 100;
    rollout.transitions.clear();
    for (int i = 0; i < 100; ++i) {
        rollout.transitions.push_back(
            {1700000000.0 + i, "ops", "half", "half", std::to_string(i), ""});
    }
    const auto back =
        driftgate::decode_rollout(driftgate::encode_rollout(rollout, *plan), *plan, "doc", "x");
    REQUIRE(back.transitions.size() == 100);
    CHECK(back.transitions.front().reason == "0");
    CHECK(back.transitions.back().reason == "99");
}

TEST_CASE("boundary: a restore generation runs up to the last version a state holds",
          "[rollout_state][boundary]") {
    const auto plan = default_plan();
    PersistedRollout rollout = half_rollout();
    rollout.incarnation = "0123456789abcdef";
    rollout.restore_generation = StateFile::kMaxVersion;
    const std::string text = driftgate::encode_rollout(rollout, *plan);
    CHECK(driftgate::decode_rollout(text, *plan, "doc", "x").restore_generation ==
          StateFile::kMaxVersion);
    std::string past = text;
    const std::string last = std::to_string(StateFile::kMaxVersion);
    past.replace(past.find(last), last.size(), std::to_string(StateFile::kMaxVersion + 1));
    CHECK_THROWS_WITH(driftgate::decode_rollout(past, *plan, "doc", "x"),
                      Catch::Contains("restore_generation '9007199254740992'"));
}

TEST_CASE("boundary: approvals are fewer than the next stage requires, none at the final stage",
          "[rollout_state][boundary]") {
    auto stages = StagePlan::default_stages();
    stages[1].approvals_required = 3;  // quarter: three people
    const StagePlan plan(stages);
    PersistedRollout canary;
    canary.stage_index = 0;
    canary.started_at = 1700000000.0;
    canary.version = 1;
    auto decoded = [&](PersistedRollout rollout) {
        return driftgate::decode_rollout(driftgate::encode_rollout(rollout, plan), plan, "doc",
                                         "x");
    };
    canary.approvals = {"alice", "bob"};  // two of three
    CHECK(decoded(canary).approvals.size() == 2);
    canary.approvals = {"alice", "bob", "carol"};  // three would have entered the stage
    CHECK_THROWS_WITH(decoded(canary), Catch::Contains("fewer than the 3"));
    PersistedRollout full;
    full.stage_index = 4;
    full.started_at = 1700000000.0;
    full.state = RolloutState::Completed;
    full.version = 5;
    full.approvals = {"alice"};  // nothing left to approve
    CHECK_THROWS_WITH(decoded(full), Catch::Contains("has approvals at the final stage"));
    full.approvals.clear();
    CHECK(decoded(full).approvals.empty());
}

TEST_CASE("boundary: a document or a step that is not a JSON object is named as such",
          "[rollout_state][boundary]") {
    // Refused by its shape before any field is looked for, so the message says what it is
    // rather than naming a field it lacks.
    const auto plan = default_plan();
    for (const char* text : {"[]", "[1]", "3", "\"x\"", "null", "true"}) {
        INFO(text);
        CHECK_THROWS_WITH(driftgate::decode_rollout(text, *plan, "doc", "x"),
                          Catch::Contains("does not hold a JSON object"));
    }
    const std::string object = driftgate::encode_rollout(half_rollout(), *plan);
    CHECK_NOTHROW(driftgate::decode_rollout(object, *plan, "doc", "x"));
    for (const char* step : {"3", "[]", "\"half\"", "null"}) {
        INFO(step);
        auto json = nlohmann::json::parse(object);
        json["transitions"].push_back(nlohmann::json::parse(step));
        json["version"] = 10;
        CHECK_THROWS_WITH(driftgate::decode_rollout(json.dump(), *plan, "doc", "x"),
                          Catch::Contains("has a transition that is not an object"));
    }
}
