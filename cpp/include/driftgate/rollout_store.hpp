#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "driftgate/metrics_registry.hpp"
#include "driftgate/rollout_state.hpp"

namespace driftgate {

namespace metrics {
inline constexpr MetricName kStateVersion{
    "driftgate_state_version", "Version of the rollout state this process holds (0: none yet)."};
inline constexpr MetricName kStateStoreUp{
    "driftgate_state_store_up", "1 while the shared rollout state store answers, 0 while not."};
inline constexpr MetricName kStateSyncAge{
    "driftgate_state_sync_age_seconds",
    "Seconds since this process last read the shared rollout state successfully."};
inline constexpr MetricName kStateStoreRegressed{
    "driftgate_state_store_regressed",
    "1 while the shared store holds an older rollout state than this process has seen (lost, "
    "flushed or failed over): automatic moves are held and admin moves refused until it is "
    "restored."};
inline constexpr MetricName kNotifications{
    "driftgate_notifications_total",
    "Rollout notifications by sink, event and outcome (sent, failed, dropped, duplicate)."};
}  // namespace metrics

/// A shared store could not be reached or answered something unusable. Nothing was committed
/// by the call that raised it. A StateError, so code that handles state-file failures handles
/// this too; callers that can tell the two apart answer it as "state store unavailable".
class StateStoreError : public StateError {
  public:
    explicit StateStoreError(const std::string& message) : StateError(message) {}
};

/// A commit whose outcome the store could not learn (it stopped answering after the commit was
/// sent, and did not answer the read-back either): the move may or may not have landed. The
/// manager follows the stored state at its next read; a retry with the same operation id is
/// answered with what really happened.
class StateOutcomeUnknown : public StateStoreError {
  public:
    explicit StateOutcomeUnknown(const std::string& message) : StateStoreError(message) {}
};

/// The shared store holds an older state than this process has seen: the key is gone, its
/// version went back, or it holds another incarnation without a higher restore generation.
/// Nothing is moved until an operator restores the state (driftgate state restore).
class StateRegressed : public StateStoreError {
  public:
    explicit StateRegressed(const std::string& message) : StateStoreError(message) {}
};

/// Where the rollout state of several processes (the replicas of one service) lives. It holds
/// one document (encode_rollout) and its version, and commits a new one only by
/// compare-and-set on that version, in one atomic step on the server, so a transition commits
/// only if nobody committed since it was decided. It knows nothing of the rollout's rules: the
/// manager decides, the store stores.
///
/// Implementations may be written in Python (driftgate.RedisStateStore); the manager calls
/// them with its own lock held and without the GIL.
class SharedStateStore {
  public:
    enum class CommitStatus {
        Committed,  // stored as `version`
        Conflict,   // the stored version is not `version - 1`: somebody else committed
        Fenced,     // an automatic decision whose evaluator no longer holds the lease
    };
    struct CommitResult {
        CommitStatus status = CommitStatus::Committed;
        /// The document stored now, when the store returned it with a conflict.
        std::optional<std::string> current;
    };

    virtual ~SharedStateStore() = default;

    /// The stored document, or nullopt when nothing is stored yet. StateStoreError when the
    /// store cannot be reached; StateError when the key holds something that is not a rollout
    /// document (it is then never overwritten).
    virtual std::optional<std::string> load() = 0;

    /// Stores `document` as `version` if the stored version is `version - 1` (nothing stored
    /// counts as 0) and the stored document is of the same incarnation as `document` (or has
    /// none yet). `automatic` marks a decision of the fleet's evaluator, which commits only
    /// while its lease holds. The newest transition of `document` carries the move's operation
    /// id: a store that loses the answer looks for it in what is stored, so every commit has
    /// one known outcome. StateStoreError when nothing was committed; StateOutcomeUnknown when
    /// the store cannot tell yet (the manager then follows what it reads next).
    virtual CommitResult commit(std::uint64_t version, const std::string& document,
                                bool automatic) = 0;

    /// A one-line description for status and messages, never carrying a password.
    virtual std::string describe() const = 0;
};

}  // namespace driftgate
