#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "driftgate/rollout_config.hpp"

namespace driftgate {

/// A state file that cannot be used or written: corrupt, made for another stage list, or on a
/// disk that refuses the write. The message names the file and the problem.
class StateError : public std::runtime_error {
  public:
    using std::runtime_error::runtime_error;
};

/// Where a rollout stands: moving through its stages, aborted at 0 % after a rollback from the
/// first stage, or completed at the final stage.
enum class RolloutState { Active, Aborted, Completed };

std::string_view to_string(RolloutState state) noexcept;
std::optional<RolloutState> parse_rollout_state(std::string_view text) noexcept;

/// One step of a rollout's history. `from` and `to` are stage names, or "aborted".
struct Transition {
    double time = 0;  // unix seconds
    std::string actor;
    std::string from;
    std::string to;
    std::string reason;
};

/// What the state file holds.
struct PersistedRollout {
    std::size_t stage_index = 0;
    double started_at = 0;  // unix seconds
    RolloutState state = RolloutState::Active;
    std::uint64_t version = 0;
    std::vector<Transition> transitions;  // oldest first, at most kMaxTransitions
};

/// The rollout state file: JSON, replaced atomically and durably (temp file in the same folder,
/// fsync, rename, fsync of the folder), so a process killed at any moment leaves either the old
/// or the new state. A file that cannot be read is never overwritten: `load` refuses it.
/// Not thread-safe; RolloutManager serialises its use.
class StateFile {
  public:
    static constexpr int kSchemaVersion = 1;
    static constexpr std::size_t kMaxTransitions = 100;

    StateFile(std::string path, std::vector<RolloutStage> stages);

    /// nullopt when the file does not exist; StateError when it is corrupt, of another schema,
    /// or made for another stage list.
    std::optional<PersistedRollout> load() const;
    /// StateError when the write fails; the old file is then untouched.
    void save(const PersistedRollout& rollout) const;

    const std::string& path() const { return path_; }
    const std::string& fingerprint() const { return fingerprint_; }

  private:
    std::string path_;
    std::vector<RolloutStage> stages_;
    std::string fingerprint_;
};

}  // namespace driftgate
