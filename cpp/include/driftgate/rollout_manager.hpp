#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "driftgate/clock.hpp"
#include "driftgate/enforcer.hpp"
#include "driftgate/metrics_registry.hpp"
#include "driftgate/rollout_config.hpp"
#include "driftgate/rollout_state.hpp"
#include "driftgate/rollout_store.hpp"
#include "driftgate/spin_mutex.hpp"

namespace driftgate {

/// What a rollout decision did.
enum class DecisionAction {
    Advanced,            // entered the next stage (automatically or by a human)
    Resumed,             // an aborted rollout restarted at its first stage
    RolledBack,          // back to the previous stage
    Aborted,             // rolled back from the first stage: 0 % enforced
    Held,                // stayed: minimum duration, error-rate bounds, or aborted
    WaitingForApproval,  // ready, but the next stage needs a human
    InsufficientData,    // fewer requests than min_requests
    AtFinalStage,        // nothing left to advance to
    AlreadyAborted,      // a rollback asked of an aborted rollout
    AnalysisFailed,      // the error-rate source failed: held
    Conflict,            // nothing moved: the shared state changed underneath, a precondition
                         // on the version failed, or the evaluator lost its lease
    ApprovalRecorded,    // one more person approved the next stage; it needs more of them
    AlreadyApproved,     // this person's approval of the next stage is already counted
};

std::string_view to_string(DecisionAction action) noexcept;

/// The evidence an automatic decision is judged on: the error rate of the current stage, and
/// the requests behind it when the source counted them (with the failures among them).
struct Evidence {
    double error_rate = 0;
    std::optional<std::uint64_t> requests;
    std::optional<std::uint64_t> failed;
};

/// What keeps a rollout where it is, as the next automatic decision sees it.
enum class WaitingFor {
    Check,      // nothing: the next check moves it (advances, or rolls back above the limit)
    Approval,   // a person's advance enters the next stage
    Duration,   // the stage's minimum time is not over
    Data,       // fewer requests in this stage than min_requests
    ErrorRate,  // the error rate (with confidence, its upper bound) is above the stage's limit
    Resume,     // aborted: only a person's advance resumes it
    Nothing,    // completed: at the final stage
    Store,      // the shared state has not been read yet
};

std::string_view to_string(WaitingFor waiting_for) noexcept;

/// What the rules make of a position and its evidence: the action an automatic decision takes
/// (Advanced, RolledBack, Aborted, Held, WaitingForApproval, InsufficientData or
/// AtFinalStage), what keeps the rollout where it is, and why.
struct Judgement {
    DecisionAction action = DecisionAction::Held;
    WaitingFor waiting_for = WaitingFor::Check;
    std::string reason;
};

/// The single home of the automatic decision's rules, in order: aborted (held until a person
/// resumes it); fewer counted requests than `min_requests` (insufficient data: never a
/// rollback on too little of this stage's evidence); above the stage's maximum (rolled back
/// when the plan rolls back on errors; with `confidence` and counts, when the Wilson lower
/// bound is above it); with `confidence`, the upper bound above it (held); requests not
/// counted while `min_requests` asks for some (insufficient data); then
/// StagePlan::check_advance at `now`. Without evidence (no reading in this stage yet) the
/// error-rate rules are skipped, except that with `confidence` nothing is known before the
/// stage's first reading (insufficient data).
Judgement judge(const StagePlan& plan, const RolloutPosition& position,
                const std::optional<Evidence>& evidence, std::uint64_t min_requests,
                std::optional<double> confidence, double now);

/// The outcome of one decision, built by the call that made it. `success` and `message` are
/// the classic (bool, str) answer; the rest says what happened, from where to where, and the
/// version after it (unchanged when nothing moved).
struct Decision {
    bool success = false;
    std::string message;
    DecisionAction action = DecisionAction::Held;
    std::string from_stage;  // a stage name, or "aborted"
    std::string to_stage;
    double from_percentage = 0;
    double to_percentage = 0;
    std::uint64_t version = 0;
    RolloutState state = RolloutState::Active;
    std::optional<double> error_rate;  // the rate judged, when there was one
    std::string actor;                 // who moved the rollout; empty when nothing moved
    std::string reason;     // the history's reason for a move or a recorded approval, else empty
    std::string operation;  // the id of the operation that moved it (or recorded an approval)
    /// True when the operation had already been applied: this is its first outcome, read from
    /// the history, and nothing moved now.
    bool replayed = false;

    bool moved() const { return from_stage != to_stage; }
};

/// Walks a staged rollout: advances after a stage's minimum time while the error rate is low,
/// rolls back by itself when it is high, waits for a human where a stage asks for approval,
/// and aborts to 0 % when rolled back from the first stage. It alone owns the rollout's
/// position: the RolloutConfig it was given becomes a read-only view of it, and its part of
/// the enforcer is its to set: the global rollout percent (no policies), or a share of the
/// policies it names. Every transition sets that percent, updates the guardian_rollout_*
/// metrics (labelled with the rollout's name) and is persisted before the call returns.
/// Thread-safe: one mutex serialises decisions and transitions.
class RolloutManager {
  public:
    struct Options {
        std::shared_ptr<Enforcer> enforcer;         // optional: whose percent to set
        std::shared_ptr<MetricsRegistry> registry;  // default: the enforcer's, else default
        std::optional<std::string> state_path;      // optional: where to persist
        std::shared_ptr<SharedStateStore> store;    // optional: shared with other replicas
        std::shared_ptr<const Clock> clock;         // default: SystemClock; wall() is used
        std::uint64_t min_requests = 0;             // hold below this many requests
        std::optional<double> confidence;           // Wilson bounds for count-based rates
        /// The rollout's name: the `rollout` label of its metrics, and its cohort's salt.
        std::string rollout = std::string(kDefaultRollout);
        /// The policies it governs (a share of the enforcer); nullopt: every policy no share
        /// holds (the enforcer's global percent).
        std::optional<std::vector<std::string>> policies;
        /// The keys a share enforces on; the global percent always samples the enforcer's own.
        Cohort cohort = Cohort::Independent;
    };

    /// Everything a status report needs, read at one instant.
    struct Snapshot {
        std::shared_ptr<const StagePlan> plan;
        RolloutPosition position;
        double now = 0;
        std::uint64_t version = 0;
        double enforced_percentage = 0;
        std::optional<double> last_error_rate;
        std::optional<Evidence> evidence;  // the last reading in the current stage, if any
        std::uint64_t min_requests = 0;
        std::optional<double> confidence;
        std::vector<Transition> transitions;
        std::optional<std::string> state_path;
        bool synced = true;                  // false until a shared store's state has been read
        std::vector<std::string> approvals;  // of entering the next stage, so far
        std::string incarnation;             // empty until the state's first write
        std::uint64_t restore_generation = 0;
        std::string regressed;  // why the shared store is behind this replica; empty if not
        /// The version of a commit the store announced that this replica has not read yet
        /// (note_announced); 0 when none is pending.
        std::uint64_t announced = 0;
        /// Which publication this is: each one has a greater number than the one before, so
        /// two snapshots of the same number differ in `now` alone.
        std::uint64_t publication = 0;

        /// What the next automatic decision would make of this snapshot at `now`: judge()
        /// on the position and the last reading, or WaitingFor::Store while unsynced.
        Judgement judgement() const { return judgement_at(now); }
        Judgement judgement_at(double at) const;
    };

    /// What a status says of the snapshot published now that changes with the clock alone,
    /// read without copying the snapshot: its publication, the time, the stage's start (the
    /// time itself while the position has none) and the judgement at that time.
    struct Moment {
        std::uint64_t publication = 0;
        double now = 0;
        double started_at = 0;
        Judgement judgement;
    };

    /// Resumes from the state file when there is one (StateError when it cannot be used; it is
    /// then left untouched); else starts fresh at the config's position, stamping the stage's
    /// start now unless the config gives one. With a shared store it resumes from the stored
    /// state, or stores the fresh one when nothing is stored; a store that cannot be reached,
    /// or holds something that is not this rollout (it is never overwritten), leaves the
    /// manager unsynced (0 % enforced, moves refused with StateStoreError) until
    /// follow() gives it the state. std::invalid_argument when the config or the enforcer's part
    /// it claims (Enforcer::claim_rollout_percent, Enforcer::claim_share)
    /// already belongs to another manager, or when both a state path and a store are given.
    /// Gone, it gives them back, and lets go of the series it exported (they leave the registry
    /// unless another manager of the same rollout's name holds them too).
    RolloutManager(const RolloutConfig& config, Options options);
    ~RolloutManager();

    RolloutManager(const RolloutManager&) = delete;
    RolloutManager& operator=(const RolloutManager&) = delete;

    /// The synchronous decision on an error rate (and the requests behind it, when known).
    /// With `read_at`, the version at which the rate was read: when the rollout has moved since
    /// (a person's move, or one followed from another replica), the reading belongs to another
    /// stage, so nothing is decided or kept (action Conflict).
    Decision evaluate(double error_rate, std::optional<std::uint64_t> requests = std::nullopt,
                      std::optional<std::uint64_t> read_at = std::nullopt);
    /// The same from (failed, total); with `confidence`, rollback needs the Wilson lower bound
    /// above the stage maximum and advance needs the upper bound at or below it.
    Decision evaluate_counts(std::uint64_t failed, std::uint64_t total,
                             std::optional<std::uint64_t> read_at = std::nullopt);

    /// A human's advance: resumes an aborted rollout at the first stage, else enters the next
    /// stage whether or not it needs approval. A stage that needs several approvals is entered
    /// by the advance of the last distinct approver; each earlier one is recorded (a version
    /// of its own, in the history) and a rollback forgets them. With `expected_version`, nothing
    /// moves (action Conflict) unless the rollout is at that version when the move commits; without
    /// it, a move that loses its commit to another replica is decided again on the new state.
    /// `reason` (cleaned like a rollback's) is kept in the history.
    /// `expected_incarnation` (with `expected_version`, from an entity tag) also requires the
    /// state's incarnation, so a precondition taken before the store lost its state never
    /// holds after it. `operation` names the move (1-64 of [A-Za-z0-9_.:-], e.g. a client's
    /// Idempotency-Key; one is chosen when empty) and is kept in its history entry: a move
    /// whose operation is already in the history is answered with that first outcome
    /// (`replayed`), never applied twice. StateRegressed while the shared store is behind
    /// what this replica has seen.
    /// `person` is who the approval counts as where a stage needs several: the stable id of
    /// the person behind `actor` (the same person may sign in under several names). Without
    /// it the actor is the person; an empty one is nobody (a shared break-glass credential),
    /// which may enter a stage needing one approval but is never one of the several people a
    /// stage asks for (action AlreadyApproved, nothing recorded).
    Decision manual_advance(std::string_view actor = "manual", std::string_view reason = "",
                            std::optional<std::uint64_t> expected_version = std::nullopt,
                            std::optional<std::string> expected_incarnation = std::nullopt,
                            std::string_view operation = "",
                            std::optional<std::string> person = std::nullopt);
    /// A human's rollback; from the first stage it aborts. The rest as for advance.
    Decision manual_rollback(std::string_view actor = "manual", std::string_view reason = "",
                             std::optional<std::uint64_t> expected_version = std::nullopt,
                             std::optional<std::string> expected_incarnation = std::nullopt,
                             std::string_view operation = "");

    /// Adopts a document read from the shared store when it is newer than what this manager
    /// holds (or when it holds nothing yet); never goes back to an older version. A document
    /// behind what this manager has seen (an older version, or another incarnation without a
    /// higher restore generation) is not adopted: the manager reports the store regressed
    /// (regressed(), driftgate_state_store_regressed) and holds every move until a restored
    /// state (a higher restore generation) or the state it saw comes back. Returns whether it
    /// adopted it. `read_at` is the version this manager held when the read began: when it has
    /// moved since (this replica committed meanwhile), the document is only adopted if newer,
    /// never judged a regression. StateError when the document is not this rollout's.
    bool follow(std::string_view document, std::optional<std::uint64_t> read_at = std::nullopt);
    /// Re-reads the shared store and follows it; returns the version held afterwards. An
    /// unsynced manager that finds nothing stored stores the fresh rollout, as at a first
    /// start; a synced one reports the store regressed (StateRegressed) and recreates nothing.
    /// StateStoreError when the store cannot be reached.
    std::uint64_t refresh();
    /// Notes a commit the shared store announced (the hint its commit script publishes: the
    /// version, incarnation, restore generation and newest step's operation it wrote), which
    /// this replica may not get to read: the store can fail over right after the commit. A
    /// later document of that incarnation and generation that lacks it (an older version, or
    /// another step at its version) is then a regression, as if this replica had read the
    /// commit, until the store holds it again or a restore comes. While it is pending, a move
    /// (human or automatic) reads the store before it commits anything: a replica never moves
    /// from a version older than one it knows was committed. Ignored (false) while unsynced,
    /// for another incarnation or generation than the one held, and for a version not newer
    /// than the one held or already announced.
    bool note_announced(std::uint64_t version, std::string_view incarnation,
                        std::uint64_t restore_generation, std::string_view operation);
    /// Why the shared store is behind what this manager has seen; empty while it is not.
    std::string regressed() const;
    /// Adopts a reading the fleet's evaluator made of the stage at `at`, so every replica's
    /// status judges the same evidence; ignored unless this replica stands at that very stage
    /// (index, state and start) and has no reading of its own. True when adopted.
    bool adopt_evidence(const RolloutPosition& at, const Evidence& evidence);
    /// Publishes the store's health: driftgate_state_store_up and the age of the last
    /// successful contact (driftgate_state_sync_age_seconds).
    void note_store(bool up, double sync_age_seconds);
    /// Counts one notification outcome in driftgate_notifications_total. Labels that are not
    /// 1-64 characters of [A-Za-z0-9_.:-] are counted as "other".
    void count_notification(std::string_view sink, std::string_view event,
                            std::string_view outcome);
    bool synced() const;
    std::uint64_t version() const;

    /// A decision that moves nothing, at the current position (e.g. a failed error-rate read).
    Decision hold(std::string message, DecisionAction action = DecisionAction::Held) const;
    /// Counts an evaluation skipped because the error-rate source failed.
    void record_analysis_error();

    /// A read-only view of the rollout: the plan and the manager's live position.
    RolloutConfig config() const;
    /// Published after every change, so a status read never waits for a decision or a store
    /// call in progress: it copies the last published state under a lock held for a pointer.
    Snapshot snapshot() const;
    Moment moment() const;
    double enforced_percentage() const;
    std::uint64_t min_requests() const;
    /// Changes the minimum number of requests a decision needs, from the next decision on (a
    /// configuration reload).
    void set_min_requests(std::uint64_t min_requests);
    std::optional<double> confidence() const { return options_.confidence; }
    const std::string& rollout() const { return options_.rollout; }
    const std::optional<std::vector<std::string>>& policies() const { return options_.policies; }
    Cohort cohort() const { return options_.cohort; }
    const std::shared_ptr<Enforcer>& enforcer() const { return options_.enforcer; }
    const std::shared_ptr<MetricsRegistry>& registry() const { return options_.registry; }
    const std::shared_ptr<const Clock>& clock() const { return options_.clock; }
    const std::shared_ptr<SharedStateStore>& store() const { return options_.store; }

  private:
    /// Thrown inside a transition whose commit lost to another writer (or whose evaluator lost
    /// its lease); the manager has already followed the stored state when it could.
    struct CommitLost {
        bool fenced = false;
    };
    enum class Mover { Automatic, Human };

    std::optional<Decision> precondition_locked(
        std::optional<std::uint64_t> expected_version,
        const std::optional<std::string>& expected_incarnation);
    /// Before a person's move: its first outcome when `operation` is in the history, else
    /// the precondition's refusal, else nullopt (go on).
    std::optional<Decision> begin_move_locked(
        std::string_view operation, std::optional<std::uint64_t> expected_version,
        const std::optional<std::string>& expected_incarnation);
    /// The first outcome of `operation` when the history holds it.
    std::optional<Decision> replay_locked(std::string_view operation) const;
    Decision conflict_locked(const CommitLost& lost,
                             std::optional<std::uint64_t> expected_version) const;
    RolloutPosition fresh_start(RolloutPosition start) const;
    PersistedRollout decode_stored(std::string_view document) const;
    void adopt_locked(PersistedRollout saved);
    /// Adopts a state read from the store when it is newer than this replica's, or when
    /// this replica holds none yet; true when it did. A state behind this replica's is
    /// reported (note_regressed_locked) instead.
    bool adopt_if_newer_locked(PersistedRollout saved);
    /// Whether `saved` (of this replica's incarnation, at its version or later) holds the
    /// step this replica holds last where it belongs; true when that cannot be told (legacy
    /// steps without operation ids, or a step no longer in the kept history).
    bool continues_history(const PersistedRollout& saved) const;
    /// Whether `saved` (at `version` or later) holds the step `operation` at `version`; true
    /// when that cannot be told, as for continues_history.
    static bool holds_step(const PersistedRollout& saved, std::uint64_t version,
                           std::string_view operation);
    /// Why `saved` (adoptable by what this replica holds) lacks the commit the store
    /// announced, or empty; forgets the announcement once a state of its lineage holds it, or
    /// one of another lineage (a restore) is read.
    std::string lost_announced_locked(const PersistedRollout& saved);
    /// Forgets the announced commit, and publishes that nothing is pending.
    void forget_announced_locked();
    void note_regressed_locked(const std::string& problem);
    void clear_regressed_locked();
    void refresh_locked();
    void require_synced_locked() const;
    void start_shared_locked(RolloutPosition start);
    Decision decide_locked(const Evidence& evidence, std::optional<std::uint64_t> read_at);
    Decision decide_moving_locked(const Evidence& evidence);
    /// Persists then applies a move, and counts it as an advancement or a rollback. A move that
    /// lowers enforcement is applied even when the write fails (the StateError still raised);
    /// one that raises it is not, and the old state is written back if the new one had already
    /// replaced the file.
    void transition_locked(const RolloutPosition& next, std::string_view actor, std::string reason,
                           Mover mover = Mover::Human, std::string_view operation = "");
    void persist_and_apply_locked(const RolloutPosition& next, std::string_view actor,
                                  std::string reason, bool first, Mover mover = Mover::Human,
                                  std::vector<std::string> approvals = {},
                                  std::string_view operation = "");
    /// An advance by a person, or their approval of it when the next stage needs more.
    Decision advance_locked(std::string_view actor, std::string_view person,
                            std::string_view reason, std::string_view operation);
    void publish_locked();
    /// Makes the current state the one snapshot() answers with.
    void publish_snapshot_locked();
    Decision decision_locked(bool success, DecisionAction action, std::string message,
                             const RolloutPosition& before, std::string_view actor) const;
    /// Creates every transition counter this stage list can reach, at 0, so that increase()
    /// sees the first advance or rollback as a step from 0 rather than a new series.
    void declare_transition_counters();
    double wall_now() const;
    /// `labels` and this rollout's.
    prometheus::Labels labelled(prometheus::Labels labels = {}) const;
    /// Gives back the enforcer's part this manager claimed: its share, or the global percent.
    void release_enforcer();

    Options options_;
    // Every series the manager exports, labelled with its rollout: let go when it goes.
    SeriesHolder series_;
    std::shared_ptr<const StagePlan> plan_;
    std::shared_ptr<RolloutConfig::Shared> view_;
    std::shared_ptr<const Clock> view_clock_;  // the config's own clock, given back at the end
    mutable std::mutex mutex_;
    RolloutPosition position_;
    std::uint64_t version_ = 0;
    std::optional<double> last_error_rate_;
    std::optional<Evidence> evidence_;  // read in the current stage; forgotten when it changes
    std::vector<Transition> transitions_;
    std::vector<std::string> approvals_;
    std::string incarnation_;  // of the state held; kept when a state without one is adopted
    std::uint64_t restore_generation_ = 0;
    std::string regressed_;  // why the shared store is behind this replica; empty if it is not
    /// The newest commit the store announced that this replica has not read (note_announced).
    struct Announced {
        std::uint64_t version = 0;
        std::string incarnation;
        std::uint64_t restore_generation = 0;
        std::string operation;
    };
    std::optional<Announced> announced_;
    std::optional<StateFile> state_file_;
    bool synced_ = true;                 // false while a shared store's state has not been read
    RolloutPosition unsynced_start_;     // where an unsynced manager starts once it can
    mutable SpinMutex published_mutex_;  // held only to copy or swap the pointer
    std::shared_ptr<const Snapshot> published_;
    std::uint64_t publications_ = 0;  // under mutex_, as publish_snapshot_locked() runs

    std::optional<prometheus::Labels> stage_labels_;  // of the stage series held now
    prometheus::Gauge* error_rate_gauge_ = nullptr;
    prometheus::Counter* analysis_errors_ = nullptr;
    prometheus::Gauge* version_gauge_ = nullptr;
    prometheus::Gauge* store_up_gauge_ = nullptr;  // only with a shared store
    prometheus::Gauge* sync_age_gauge_ = nullptr;
    prometheus::Gauge* regressed_gauge_ = nullptr;
};

}  // namespace driftgate
