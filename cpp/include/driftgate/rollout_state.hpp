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
/// disk that refuses the write. The message names the file and the problem (printable ASCII:
/// bytes from the file are escaped).
class StateError : public std::runtime_error {
  public:
    explicit StateError(const std::string& message, bool replaced = false);

    /// True when the new file had already replaced the old one when a later step (syncing the
    /// folder) failed: the disk may then hold the new state, unacknowledged.
    bool replaced() const { return replaced_; }

  private:
    bool replaced_;
};

/// One step of a rollout's history. `from` and `to` are stage names, or "aborted"; `from` is
/// empty for the step that started the rollout.
struct Transition {
    double time = 0;  // unix seconds
    std::string actor;
    std::string from;
    std::string to;
    std::string reason;
    /// The id of the operation that made this step (a client's Idempotency-Key, or one the
    /// manager chose): how a writer that lost its answer finds out whether the step landed, and
    /// how a retried request is answered with the first outcome. Empty in older histories.
    std::string op;
};

/// What the state file holds.
struct PersistedRollout {
    std::size_t stage_index = 0;
    double started_at = 0;  // unix seconds
    RolloutState state = RolloutState::Active;
    std::uint64_t version = 0;
    std::vector<Transition> transitions;  // oldest first, at most kMaxTransitions
    /// Who approved entering the next stage so far (distinct; fewer than it requires).
    std::vector<std::string> approvals;
    /// Chosen when the state is first written and kept by every later write, so a store that
    /// lost the state and was started afresh is told apart from the one a replica has seen,
    /// whatever its version. Empty in a state written before incarnations existed (it gets one
    /// at its next write).
    std::string incarnation;
    /// 0 when created; raised by each restore from an export, so replicas accept a restored
    /// state whatever incarnation they saw.
    std::uint64_t restore_generation = 0;
};

/// The rollout state file: JSON, replaced atomically and durably (temp file in the same folder,
/// fsync, rename, fsync of the folder), so a process killed at any moment leaves either the old
/// or the new state. A file loads only into a state the machine can reach; anything else is a
/// StateError, and such a file is never overwritten. The path must not be a symbolic link (a
/// rename would replace the link, not its target). A mode set on the file survives writes.
/// Temp files are `<file>.tmp.<pid>.<random>`, locked while written, so names never collide and
/// those of dead writers are recognised and removed.
/// Not thread-safe; RolloutManager serialises its use.
class StateFile {
  public:
    static constexpr int kSchemaVersion = 1;
    static constexpr std::size_t kMaxTransitions = 100;
    static constexpr std::size_t kMaxReasonLength = 200;
    static constexpr std::size_t kMaxFileBytes = 1 << 20;
    /// Versions stay exact as JSON numbers in every consumer (JavaScript, Lua, doubles).
    static constexpr std::uint64_t kMaxVersion = (std::uint64_t{1} << 53) - 1;
    /// 10000-01-01T00:00:00Z, the first instant a state cannot hold: the reader accepts times
    /// of the years 1970 to 9999, so the writer writes none at or past this one (written to
    /// the microsecond, any time before it still reads as the year 9999).
    static constexpr double kEndOfTime = 253402300800.0;

    /// std::invalid_argument for an empty path or one containing NUL.
    StateFile(std::string path, std::shared_ptr<const StagePlan> plan);

    /// nullopt when the file does not exist; StateError when it is corrupt, of another schema,
    /// made for another stage list, a symbolic link, or holds a state the machine cannot reach.
    std::optional<PersistedRollout> load() const;
    /// StateError naming the failed step; the old file is then untouched unless the error says
    /// replaced().
    void save(const PersistedRollout& rollout) const;

    /// Removes temp files of this state file that no live writer holds (left by a writer that
    /// was killed); returns how many.
    std::size_t remove_stale_temp_files() const;

    const std::string& path() const { return path_; }
    const std::string& fingerprint() const { return plan_->fingerprint(); }

  private:
    std::string path_;
    std::shared_ptr<const StagePlan> plan_;
};

/// Throws StateError naming the value unless the reader would accept every number of
/// `rollout` back: a version from 1 to StateFile::kMaxVersion, and a stage start and
/// transition times from 1970 up to StateFile::kEndOfTime. Checked before anything is written.
void check_writable(const PersistedRollout& rollout);

/// The JSON document a state file or a shared store holds for `rollout` (at most
/// StateFile::kMaxTransitions of its history, newest last); StateError when check_writable
/// refuses it.
std::string encode_rollout(const PersistedRollout& rollout, const StagePlan& plan);

/// Parses and checks a document as strictly as a state file is loaded: exact JSON types, this
/// plan's fingerprint, a reachable state, a history ending at the position. Otherwise a
/// StateError reading "<what> <problem>; <advice>".
PersistedRollout decode_rollout(std::string_view text, const StagePlan& plan,
                                const std::string& what, const std::string& advice);

/// 16 random hex digits: an incarnation, or the id of an operation that came without one.
std::string random_id();

/// The entity tag of a state: `<incarnation>.<version>`, or `<version>` for a state that has
/// no incarnation yet (unquoted).
std::string entity_tag(const std::string& incarnation, std::uint64_t version);

/// Reasons land in the persisted history and the HTTP status: printable ASCII, at most
/// StateFile::kMaxReasonLength characters; anything else becomes '?'.
std::string clean_reason(std::string_view reason);

/// Throws std::invalid_argument unless `actor` is 1-64 characters of [A-Za-z0-9_.:-] (a role
/// or account name, never request data).
void validate_actor(std::string_view actor);

}  // namespace driftgate
