#include "driftgate/rollout_state.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "driftgate/policy_index.hpp"
#include "format.hpp"

namespace driftgate {

namespace {

using Json = nlohmann::json;

std::string errno_text(int error) { return std::strerror(error); }

std::string folder_of(const std::string& path) {
    const auto slash = path.rfind('/');
    if (slash == std::string::npos) return ".";
    if (slash == 0) return "/";
    return path.substr(0, slash);
}

std::string base_of(const std::string& path) {
    const auto slash = path.rfind('/');
    return slash == std::string::npos ? path : path.substr(slash + 1);
}

/// Writes all of `data` to `fd`, retrying short writes and EINTR.
bool write_all(int fd, const std::string& data) {
    std::size_t done = 0;
    while (done < data.size()) {
        const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
        if (n < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        done += static_cast<std::size_t>(n);
    }
    return true;
}

std::uint64_t random_bits() {
    static std::atomic<std::uint64_t> counter{0};
    std::uint64_t random = 0;
    if (::getrandom(&random, sizeof random, GRND_NONBLOCK) != static_cast<ssize_t>(sizeof random)) {
        // No entropy yet (early boot): time, pid and a counter still differ from any other's.
        random = static_cast<std::uint64_t>(::time(nullptr)) * 1000003u +
                 static_cast<std::uint64_t>(::getpid()) * 7919u + counter.fetch_add(1);
    }
    return random;
}

/// The prefix every temp file of `path` starts with.
std::string temp_prefix(const std::string& path) { return path + ".tmp."; }

/// `<path>.tmp.<pid>.<64 random bits>`: a restarted process that gets the same pid (pid 1 in a
/// container) never meets its predecessor's name.
std::string temp_name(const std::string& path) {
    const std::uint64_t random = random_bits();
    char suffix[48];
    std::snprintf(suffix, sizeof suffix, "%d.%016llx", static_cast<int>(::getpid()),
                  static_cast<unsigned long long>(random));
    return temp_prefix(path) + suffix;
}

Json to_json(const Transition& t) {
    Json json = {{"time", detail::format_iso8601(t.time)},
                 {"actor", t.actor},
                 {"from", t.from},
                 {"to", t.to},
                 {"reason", t.reason}};
    if (!t.op.empty()) json["op"] = t.op;
    return json;
}

}  // namespace

StateError::StateError(const std::string& message, bool replaced)
    : std::runtime_error(detail::printable(message)), replaced_(replaced) {}

std::string random_id() {
    char text[17];
    std::snprintf(text, sizeof text, "%016llx", static_cast<unsigned long long>(random_bits()));
    return text;
}

std::string entity_tag(const std::string& incarnation, std::uint64_t version) {
    return incarnation.empty() ? std::to_string(version)
                               : incarnation + "." + std::to_string(version);
}

std::string clean_reason(std::string_view reason) {
    std::string out;
    for (char c : reason.substr(0, StateFile::kMaxReasonLength)) {
        out += (c >= 32 && c < 127) ? c : '?';
    }
    return out;
}

void validate_actor(std::string_view actor) {
    if (!PolicyIndex::is_valid(actor)) {
        throw std::invalid_argument("invalid actor " + detail::quote(actor) +
                                    ": expected 1-64 characters of [A-Za-z0-9_.:-]");
    }
}

PersistedRollout decode_rollout(std::string_view text, const StagePlan& plan,
                                const std::string& what, const std::string& advice) {
    auto refuse = [&](const std::string& problem) {
        return StateError(what + " " + problem + "; " + advice);
    };
    if (text.size() > StateFile::kMaxFileBytes) {
        throw refuse("is larger than " + std::to_string(StateFile::kMaxFileBytes) + " bytes");
    }
    Json json;
    try {
        json = Json::parse(text);
    } catch (const Json::exception& error) {
        throw refuse(std::string("is not valid JSON (") + error.what() + ")");
    }
    // Every field is checked for its exact JSON type: nlohmann's get<> would read 1.9 as 1,
    // true as 1 and -1 as 2^64-1.
    auto field = [&](const Json& object, const char* name, const char* where) -> const Json& {
        const auto it = object.find(name);
        if (it == object.end()) throw refuse(std::string("has no field '") + name + "'" + where);
        return *it;
    };
    auto text_field = [&](const Json& object, const char* name,
                          const char* where = "") -> std::string {
        const Json& value = field(object, name, where);
        if (!value.is_string()) {
            throw refuse(std::string("has a field '") + name + "'" + where +
                         " that is not a string: " + detail::quote(value.dump()));
        }
        return value.get<std::string>();
    };
    auto unsigned_field = [&](const Json& object, const char* name,
                              std::uint64_t limit) -> std::uint64_t {
        const Json& value = field(object, name, "");
        if (!value.is_number_unsigned() || value.get<std::uint64_t>() > limit) {
            throw refuse(std::string("has ") + name + " " + detail::quote(value.dump()) +
                         ", expected a whole number from 0 to " + std::to_string(limit));
        }
        return value.get<std::uint64_t>();
    };
    auto time_field = [&](const Json& object, const char* name, const char* where = "") -> double {
        const std::string value = text_field(object, name, where);
        const auto parsed = detail::parse_iso8601(value);
        if (!parsed) {
            throw refuse(std::string("has a ") + name + where + " " + detail::quote(value) +
                         " that is not an ISO 8601 UTC time of the years 1970 to 9999");
        }
        return *parsed;
    };

    if (!json.is_object()) throw refuse("does not hold a JSON object");
    static const std::set<std::string> kKnown = {
        "schema_version", "stage_index", "stage_name",        "started_at",
        "state",          "version",     "transitions",       "stages_fingerprint",
        "approvals",      "incarnation", "restore_generation"};
    for (const auto& item : json.items()) {
        if (!kKnown.contains(item.key()))
            throw refuse("has an unknown field " + detail::quote(item.key()));
    }
    const Json& schema = field(json, "schema_version", "");
    if (!schema.is_number_integer() || schema.get<std::int64_t>() != StateFile::kSchemaVersion) {
        throw refuse("has schema_version " + detail::quote(schema.dump()) + ", expected " +
                     std::to_string(StateFile::kSchemaVersion));
    }
    const std::string fingerprint = text_field(json, "stages_fingerprint");
    if (fingerprint != plan.fingerprint()) {
        throw refuse("was written for another stage list (fingerprint " +
                     detail::quote(fingerprint) + ", this rollout's is " + plan.fingerprint() +
                     ")");
    }
    PersistedRollout rollout;
    rollout.stage_index = unsigned_field(json, "stage_index", plan.size() - 1);
    const std::string stage_name = text_field(json, "stage_name");
    if (stage_name != plan.stage(rollout.stage_index).name) {
        throw refuse("names stage " + detail::quote(stage_name) + " at index " +
                     std::to_string(rollout.stage_index));
    }
    const std::string state_text = text_field(json, "state");
    const auto state = parse_rollout_state(state_text);
    if (!state) throw refuse("has an unknown state " + detail::quote(state_text));
    rollout.state = *state;
    if (!plan.reachable(rollout.stage_index, rollout.state)) {
        throw refuse("has state " + detail::quote(state_text) + " at stage " +
                     detail::quote(stage_name) +
                     ", which no rollout reaches (completed only at the final stage, aborted "
                     "only at the first, active anywhere else)");
    }
    rollout.started_at = time_field(json, "started_at");
    rollout.version = unsigned_field(json, "version", StateFile::kMaxVersion);
    if (rollout.version == 0) throw refuse("has version 0; a saved rollout starts at 1");

    const Json& transitions = field(json, "transitions", "");
    if (!transitions.is_array() || transitions.size() > StateFile::kMaxTransitions) {
        throw refuse("has transitions that are not a list of at most " +
                     std::to_string(StateFile::kMaxTransitions));
    }
    if (transitions.size() > rollout.version) {
        throw refuse("has " + std::to_string(transitions.size()) + " transitions but version " +
                     std::to_string(rollout.version));
    }
    std::set<std::string> positions = {"aborted"};
    for (const auto& stage : plan.stages()) positions.insert(stage.name);
    static const std::set<std::string> kTransitionFields = {"time", "actor",  "from",
                                                            "to",   "reason", "op"};
    for (const Json& t : transitions) {
        const char* where = " in a transition";
        if (!t.is_object()) throw refuse("has a transition that is not an object");
        for (const auto& item : t.items()) {
            if (!kTransitionFields.contains(item.key())) {
                throw refuse("has an unknown field " + detail::quote(item.key()) + where);
            }
        }
        Transition transition;
        transition.time = time_field(t, "time", where);
        transition.actor = text_field(t, "actor", where);
        if (!PolicyIndex::is_valid(transition.actor)) {
            throw refuse("has an actor " + detail::quote(transition.actor) + where +
                         " that is not 1-64 characters of [A-Za-z0-9_.:-]");
        }
        transition.from = text_field(t, "from", where);
        transition.to = text_field(t, "to", where);
        if ((!transition.from.empty() && !positions.contains(transition.from)) ||
            !positions.contains(transition.to)) {
            throw refuse("has a transition from " + detail::quote(transition.from) + " to " +
                         detail::quote(transition.to) + ", a stage this rollout does not have");
        }
        transition.reason = text_field(t, "reason", where);
        if (transition.reason != clean_reason(transition.reason)) {
            throw refuse("has a reason" + std::string(where) + " that is not at most " +
                         std::to_string(StateFile::kMaxReasonLength) +
                         " printable ASCII characters");
        }
        if (t.contains("op")) {
            transition.op = text_field(t, "op", where);
            if (!PolicyIndex::is_valid(transition.op)) {
                throw refuse("has an operation id " + detail::quote(transition.op) + where +
                             " that is not 1-64 characters of [A-Za-z0-9_.:-]");
            }
        }
        rollout.transitions.push_back(std::move(transition));
    }
    const RolloutPosition position{rollout.stage_index, rollout.started_at, rollout.state};
    if (!rollout.transitions.empty() &&
        rollout.transitions.back().to != plan.position_name(position)) {
        throw refuse("ends its history at " + detail::quote(rollout.transitions.back().to) +
                     " but stands at " + detail::quote(plan.position_name(position)));
    }
    if (const auto approvals = json.find("approvals"); approvals != json.end()) {
        // Approvals to enter the next stage: distinct people, fewer than that stage requires;
        // none at the final stage, which has no next stage to enter.
        const auto target = plan.advance_target(position);
        const std::uint32_t required = target ? plan.stage(*target).approvals_required : 1;
        if (!approvals->is_array() || approvals->size() >= std::max<std::uint32_t>(required, 1)) {
            throw refuse(target ? "has approvals that are not a list of fewer than the " +
                                      std::to_string(required) + " the next stage requires"
                                : std::string("has approvals at the final stage, which has no "
                                              "next stage to enter"));
        }
        std::set<std::string> seen;
        for (const Json& actor : *approvals) {
            if (!actor.is_string() || !PolicyIndex::is_valid(actor.get<std::string>()) ||
                !seen.insert(actor.get<std::string>()).second) {
                throw refuse("has an approval " + detail::quote(actor.dump()) +
                             " that is not a distinct name of 1-64 characters of "
                             "[A-Za-z0-9_.:-]");
            }
            rollout.approvals.push_back(actor.get<std::string>());
        }
    }
    if (json.contains("incarnation")) {
        rollout.incarnation = text_field(json, "incarnation");
        if (!PolicyIndex::is_valid(rollout.incarnation)) {
            throw refuse("has an incarnation " + detail::quote(rollout.incarnation) +
                         " that is not 1-64 characters of [A-Za-z0-9_.:-]");
        }
        rollout.restore_generation =
            unsigned_field(json, "restore_generation", StateFile::kMaxVersion);
    } else if (json.contains("restore_generation")) {
        throw refuse("has a restore_generation but no incarnation");
    }
    return rollout;
}

void check_writable(const PersistedRollout& rollout) {
    if (rollout.version < 1 || rollout.version > StateFile::kMaxVersion) {
        throw StateError("refusing to write a rollout state at version " +
                         std::to_string(rollout.version) + ": a state holds versions from 1 to " +
                         std::to_string(StateFile::kMaxVersion) + "; nothing was written");
    }
    auto check_time = [](double time, const char* what) {
        if (!(time >= 0 && time < StateFile::kEndOfTime)) {
            throw StateError(std::string("refusing to write a rollout state with ") + what + " " +
                             detail::format_number(time) +
                             " (unix seconds): a state holds times from "
                             "1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999999Z; nothing "
                             "was written");
        }
    };
    check_time(rollout.started_at, "a stage start");
    // Only the history that is written: the last kMaxTransitions steps.
    const auto& history = rollout.transitions;
    const std::size_t first = history.size() > StateFile::kMaxTransitions
                                  ? history.size() - StateFile::kMaxTransitions
                                  : 0;
    for (std::size_t i = first; i < history.size(); ++i) {
        check_time(history[i].time, "a transition time");
    }
}

std::string encode_rollout(const PersistedRollout& rollout, const StagePlan& plan) {
    check_writable(rollout);
    Json transitions = Json::array();
    const std::size_t first = rollout.transitions.size() > StateFile::kMaxTransitions
                                  ? rollout.transitions.size() - StateFile::kMaxTransitions
                                  : 0;
    for (std::size_t i = first; i < rollout.transitions.size(); ++i) {
        transitions.push_back(to_json(rollout.transitions[i]));
    }
    Json json = {
        {"schema_version", StateFile::kSchemaVersion},
        {"stage_index", rollout.stage_index},
        {"stage_name", plan.stage(rollout.stage_index).name},
        {"started_at", detail::format_iso8601(rollout.started_at)},
        {"state", std::string(to_string(rollout.state))},
        {"version", rollout.version},
        {"stages_fingerprint", plan.fingerprint()},
        {"transitions", transitions},
    };
    if (!rollout.approvals.empty()) json["approvals"] = rollout.approvals;
    if (!rollout.incarnation.empty()) {
        json["incarnation"] = rollout.incarnation;
        json["restore_generation"] = rollout.restore_generation;
    }
    return json.dump(2) + "\n";
}

StateFile::StateFile(std::string path, std::shared_ptr<const StagePlan> plan)
    : path_(std::move(path)), plan_(std::move(plan)) {
    if (path_.empty()) throw std::invalid_argument("state_path must not be empty");
    if (path_.find('\0') != std::string::npos) {
        throw std::invalid_argument("state_path " + detail::quote(path_) +
                                    " contains a NUL character");
    }
}

std::optional<PersistedRollout> StateFile::load() const {
    auto refuse = [&](const std::string& problem) {
        return StateError("state file '" + path_ + "' " + problem +
                          "; refusing to start so it is not overwritten (fix or move it)");
    };
    struct stat info {};
    if (::lstat(path_.c_str(), &info) != 0) {
        if (errno == ENOENT) return std::nullopt;
        throw refuse("cannot be read: " + errno_text(errno));
    }
    if (S_ISLNK(info.st_mode)) {
        throw refuse(
            "is a symbolic link (writes replace the file by rename, which would "
            "replace the link, not its target): point state_path at the file itself");
    }
    if (!S_ISREG(info.st_mode)) throw refuse("is not a regular file");
    const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) throw refuse("cannot be read: " + errno_text(errno));
    std::string text;
    char buffer[1 << 14];
    bool too_large = false;
    int read_error = 0;
    for (;;) {
        const ssize_t n = ::read(fd, buffer, sizeof buffer);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) read_error = errno;
        if (n <= 0) break;
        text.append(buffer, static_cast<std::size_t>(n));
        if (text.size() > kMaxFileBytes) {
            too_large = true;
            break;
        }
    }
    ::close(fd);
    if (read_error != 0) throw refuse("cannot be read: " + errno_text(read_error));
    if (too_large) {
        throw refuse("is larger than " + std::to_string(kMaxFileBytes) + " bytes");
    }

    return decode_rollout(text, *plan_, "state file '" + path_ + "'",
                          "refusing to start so it is not overwritten (fix or move it)");
}

void StateFile::save(const PersistedRollout& rollout) const {
    const std::string text = encode_rollout(rollout, *plan_);

    std::string temp;
    auto fail = [&](const std::string& step, int error, bool replaced = false) {
        if (!replaced && !temp.empty()) ::unlink(temp.c_str());
        return StateError("state file '" + path_ + "' could not be written (" + step + ": " +
                              errno_text(error) + ")" +
                              (replaced ? "; the new state replaced the file but may not "
                                          "survive a crash"
                                        : "; the previous state is kept"),
                          replaced);
    };

    // The mode an operator gave the file survives the replacement; a symbolic link is refused
    // rather than silently replaced by a regular file.
    mode_t mode = 0644;
    struct stat info {};
    if (::lstat(path_.c_str(), &info) == 0) {
        if (S_ISLNK(info.st_mode)) {
            throw fail("state_path is a symbolic link", ELOOP);
        }
        mode = info.st_mode & 07777;
    }
    int fd = -1;
    for (int attempt = 0; attempt < 8 && fd < 0; ++attempt) {
        temp = temp_name(path_);
        fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0 && errno != EEXIST) break;
    }
    if (fd < 0) {
        const int error = errno;
        temp.clear();
        throw fail("create temp file", error);
    }
    // Held until the rename, so a cleaner at start can tell a live writer from a dead one.
    ::flock(fd, LOCK_EX);
    auto step = [&](const char* name, bool ok) {
        if (ok) return;
        const int error = errno;
        ::close(fd);
        throw fail(name, error);
    };
    step("chmod", ::fchmod(fd, mode) == 0);
    step("write", write_all(fd, text));
    step("fsync", ::fsync(fd) == 0);
    if (::rename(temp.c_str(), path_.c_str()) != 0) {
        const int error = errno;
        ::close(fd);
        throw fail("rename", error);
    }
    ::close(fd);
    // The rename is durable only once the folder's entry is on disk.
    const int dir = ::open(folder_of(path_).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0) throw fail("open folder for fsync", errno, true);
    const bool synced = ::fsync(dir) == 0;
    const int error = errno;
    ::close(dir);
    if (!synced) throw fail("fsync folder", error, true);
}

std::size_t StateFile::remove_stale_temp_files() const {
    const std::string folder = folder_of(path_);
    const std::string prefix = base_of(temp_prefix(path_));
    DIR* dir = ::opendir(folder.c_str());
    if (dir == nullptr) return 0;
    std::size_t removed = 0;
    while (const dirent* entry = ::readdir(dir)) {
        const std::string name = entry->d_name;
        if (name.rfind(prefix, 0) != 0) continue;
        const std::string path = folder + "/" + name;
        // A temp file of another live process may be between its creation and its lock: keep
        // it. Its pid may have been reused by now; then it waits for the next start.
        const long pid = std::strtol(name.c_str() + prefix.size(), nullptr, 10);
        if (pid > 0 && pid != ::getpid() &&
            (::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM)) {
            continue;
        }
        const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0) continue;
        // A writer holds its temp file locked until the rename: a free lock means a dead one.
        if (::flock(fd, LOCK_EX | LOCK_NB) == 0 && ::unlink(path.c_str()) == 0) ++removed;
        ::close(fd);
    }
    ::closedir(dir);
    return removed;
}

}  // namespace driftgate
