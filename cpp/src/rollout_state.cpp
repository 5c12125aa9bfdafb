#include "driftgate/rollout_state.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "format.hpp"

namespace driftgate {

namespace {

using Json = nlohmann::json;

std::string errno_text() { return std::strerror(errno); }

std::string folder_of(const std::string& path) {
    const auto slash = path.rfind('/');
    if (slash == std::string::npos) return ".";
    if (slash == 0) return "/";
    return path.substr(0, slash);
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

/// A name no other writer uses: O_EXCL refuses a clash anyway. (No thread_local generator:
/// the extension's thread-locals must stay small enough for glibc's static TLS.)
std::string temp_name(const std::string& path) {
    static std::atomic<std::uint64_t> counter{0};
    char suffix[48];
    std::snprintf(suffix, sizeof suffix, ".tmp.%d.%llu", static_cast<int>(::getpid()),
                  static_cast<unsigned long long>(counter.fetch_add(1)));
    return path + suffix;
}

Json to_json(const Transition& t) {
    return {{"time", detail::format_iso8601(t.time)},
            {"actor", t.actor},
            {"from", t.from},
            {"to", t.to},
            {"reason", t.reason}};
}

}  // namespace

std::string_view to_string(RolloutState state) noexcept {
    switch (state) {
        case RolloutState::Active:
            return "active";
        case RolloutState::Aborted:
            return "aborted";
        case RolloutState::Completed:
            return "completed";
    }
    return "aborted";
}

std::optional<RolloutState> parse_rollout_state(std::string_view text) noexcept {
    if (text == "active") return RolloutState::Active;
    if (text == "aborted") return RolloutState::Aborted;
    if (text == "completed") return RolloutState::Completed;
    return std::nullopt;
}

StateFile::StateFile(std::string path, std::vector<RolloutStage> stages)
    : path_(std::move(path)),
      stages_(std::move(stages)),
      fingerprint_(stages_fingerprint(stages_)) {
    if (path_.empty()) throw std::invalid_argument("state_path must not be empty");
}

std::optional<PersistedRollout> StateFile::load() const {
    std::ifstream in(path_, std::ios::binary);
    if (!in) {
        if (::access(path_.c_str(), F_OK) != 0 && errno == ENOENT) return std::nullopt;
        throw StateError("state file '" + path_ + "' cannot be read: " + errno_text());
    }
    std::stringstream text;
    text << in.rdbuf();
    auto refuse = [&](const std::string& problem) {
        return StateError("state file '" + path_ + "' " + problem +
                          "; refusing to start so it is not overwritten (fix or move it)");
    };

    Json json;
    try {
        json = Json::parse(text.str());
    } catch (const Json::parse_error& error) {
        throw refuse(std::string("is not valid JSON (") + error.what() + ")");
    }
    try {
        if (!json.is_object()) throw refuse("does not hold a JSON object");
        const int schema = json.at("schema_version").get<int>();
        if (schema != kSchemaVersion) {
            throw refuse("has schema_version " + std::to_string(schema) + ", expected " +
                         std::to_string(kSchemaVersion));
        }
        const auto fingerprint = json.at("stages_fingerprint").get<std::string>();
        if (fingerprint != fingerprint_) {
            throw refuse("was written for another stage list (fingerprint " + fingerprint +
                         ", this rollout's is " + fingerprint_ + ")");
        }
        PersistedRollout rollout;
        rollout.stage_index = json.at("stage_index").get<std::size_t>();
        if (rollout.stage_index >= stages_.size()) {
            throw refuse("has stage_index " + std::to_string(rollout.stage_index) + " of " +
                         std::to_string(stages_.size()) + " stages");
        }
        const auto stage_name = json.at("stage_name").get<std::string>();
        if (stage_name != stages_[rollout.stage_index].name) {
            throw refuse("names stage '" + stage_name + "' at index " +
                         std::to_string(rollout.stage_index));
        }
        const auto state = parse_rollout_state(json.at("state").get<std::string>());
        if (!state) throw refuse("has an unknown state " + json.at("state").dump());
        rollout.state = *state;
        const auto started_at = detail::parse_iso8601(json.at("started_at").get<std::string>());
        if (!started_at) throw refuse("has a started_at that is not ISO 8601 UTC");
        rollout.started_at = *started_at;
        rollout.version = json.at("version").get<std::uint64_t>();
        for (const Json& t : json.at("transitions")) {
            const auto time = detail::parse_iso8601(t.at("time").get<std::string>());
            if (!time) throw refuse("has a transition time that is not ISO 8601 UTC");
            rollout.transitions.push_back(
                {*time, t.at("actor").get<std::string>(), t.at("from").get<std::string>(),
                 t.at("to").get<std::string>(), t.at("reason").get<std::string>()});
        }
        return rollout;
    } catch (const Json::exception& error) {
        throw refuse(std::string("is missing a field or has a field of the wrong type (") +
                     error.what() + ")");
    }
}

void StateFile::save(const PersistedRollout& rollout) const {
    Json transitions = Json::array();
    const std::size_t first = rollout.transitions.size() > kMaxTransitions
                                  ? rollout.transitions.size() - kMaxTransitions
                                  : 0;
    for (std::size_t i = first; i < rollout.transitions.size(); ++i) {
        transitions.push_back(to_json(rollout.transitions[i]));
    }
    const Json json = {
        {"schema_version", kSchemaVersion},
        {"stage_index", rollout.stage_index},
        {"stage_name", stages_[rollout.stage_index].name},
        {"started_at", detail::format_iso8601(rollout.started_at)},
        {"state", std::string(to_string(rollout.state))},
        {"version", rollout.version},
        {"stages_fingerprint", fingerprint_},
        {"transitions", transitions},
    };
    const std::string text = json.dump(2) + "\n";

    const std::string temp = temp_name(path_);
    auto fail = [&](const std::string& step) {
        const std::string reason = errno_text();
        ::unlink(temp.c_str());
        return StateError("state file '" + path_ + "' could not be written (" + step + ": " +
                          reason + "); the previous state is kept");
    };
    const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) throw fail("create " + temp);
    const bool written = write_all(fd, text) && ::fsync(fd) == 0;
    const int saved_errno = errno;
    ::close(fd);
    errno = saved_errno;
    if (!written) throw fail("write");
    if (::rename(temp.c_str(), path_.c_str()) != 0) throw fail("rename");
    // The rename is durable only once the folder's entry is on disk.
    const int dir = ::open(folder_of(path_).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir >= 0) {
        ::fsync(dir);
        ::close(dir);
    }
}

}  // namespace driftgate
