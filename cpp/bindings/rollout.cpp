#include <pybind11/native_enum.h>
#include <pybind11/stl.h>

#include <cmath>
#include <unordered_map>

#include "bindings.hpp"
#include "driftgate/rollout_manager.hpp"

namespace driftgate::bindings {

namespace {

/// A duration argument: a datetime.timedelta or a number of seconds.
double seconds_arg(py::handle value, const char* argument) {
    if (py::hasattr(value, "total_seconds")) return value.attr("total_seconds")().cast<double>();
    if (PyFloat_Check(value.ptr()) || PyLong_Check(value.ptr())) return value.cast<double>();
    throw py::type_error(std::string(argument) + " must be a datetime.timedelta or seconds, got " +
                         short_repr(value));
}

py::object timedelta(double seconds) {
    return py::module_::import("datetime").attr("timedelta")(py::arg("seconds") = seconds);
}

/// A point in time: an aware datetime, a naive one read as UTC, or unix seconds; None stays.
std::optional<double> time_arg(py::handle value, const char* argument) {
    if (value.is_none()) return std::nullopt;
    py::module_ datetime = py::module_::import("datetime");
    if (py::isinstance(value, datetime.attr("datetime"))) {
        py::object moment = py::reinterpret_borrow<py::object>(value);
        if (moment.attr("tzinfo").is_none()) {
            moment =
                moment.attr("replace")(py::arg("tzinfo") = datetime.attr("timezone").attr("utc"));
        }
        return moment.attr("timestamp")().cast<double>();
    }
    if (PyFloat_Check(value.ptr()) || PyLong_Check(value.ptr())) return value.cast<double>();
    throw py::type_error(std::string(argument) + " must be a datetime, unix seconds or None, got " +
                         short_repr(value));
}

py::object utc_datetime(double unix_seconds) {
    py::module_ datetime = py::module_::import("datetime");
    return datetime.attr("datetime")
        .attr("fromtimestamp")(unix_seconds, datetime.attr("timezone").attr("utc"));
}

/// `name`, a string literal, as an interned str made once: the snapshot is read on every status
/// request, and making each of its keys anew would cost about as much as its value.
py::handle key(const char* name) {
    static std::unordered_map<const char*, PyObject*> keys;  // under the GIL, for the process
    PyObject*& interned = keys[name];
    if (interned == nullptr) {
        interned = PyUnicode_InternFromString(name);
        if (interned == nullptr) throw py::error_already_set();
    }
    return interned;
}

py::dict transition_dict(const Transition& t) {
    py::dict out;
    out[key("time")] = t.time;  // unix seconds: driftgate.status formats every time
    out[key("actor")] = t.actor;
    out[key("from")] = t.from;
    out[key("to")] = t.to;
    out[key("reason")] = t.reason;
    out[key("op")] = t.op;
    return out;
}

py::object optional_time(std::optional<double> unix_seconds) {
    return unix_seconds ? utc_datetime(*unix_seconds) : py::none();
}

py::dict decision_dict(const Decision& d) {
    py::dict out;
    out["success"] = d.success;
    out["message"] = d.message;
    out["action"] = std::string(to_string(d.action));
    out["from_stage"] = d.from_stage;
    out["to_stage"] = d.to_stage;
    out["from_percentage"] = d.from_percentage;
    out["to_percentage"] = d.to_percentage;
    out["version"] = d.version;
    out["state"] = std::string(to_string(d.state));
    out["error_rate"] = d.error_rate;
    out["actor"] = d.actor;
    out["reason"] = d.reason;
    out["operation"] = d.operation;
    out["replayed"] = d.replayed;
    return out;
}

std::shared_ptr<const Clock> clock_or_system(std::shared_ptr<Clock> clock) {
    if (clock) return clock;
    return SystemClock::instance();
}

/// An expected version: None, or a whole number from 0 to StateFile::kMaxVersion.
std::optional<std::uint64_t> version_arg(std::optional<long long> value) {
    if (!value) return std::nullopt;
    if (*value < 0 || static_cast<std::uint64_t>(*value) > StateFile::kMaxVersion) {
        throw py::value_error("expected_version=" + std::to_string(*value) +
                              ": expected a whole number from 0 to " +
                              std::to_string(StateFile::kMaxVersion));
    }
    return static_cast<std::uint64_t>(*value);
}

/// The Python classes of the state exceptions, set once at import.
PyObject* state_error_type = nullptr;
PyObject* state_store_error_type = nullptr;
PyObject* state_outcome_unknown_type = nullptr;

/// A Python exception raised by a store's method, as the C++ error the manager handles: a
/// StateError (not a rollout document) stays one; anything else means the store failed.
[[noreturn]] void rethrow_store_error(py::error_already_set& error, const char* step) {
    if (error.matches(state_error_type) && !error.matches(state_store_error_type)) {
        throw StateError(py::str(error.value()).cast<std::string>());
    }
    std::string message = py::str(error.value()).cast<std::string>();
    if (error.matches(state_outcome_unknown_type)) throw StateOutcomeUnknown(message);
    if (!error.matches(state_store_error_type)) {
        message = std::string("state store ") + step + " failed (" +
                  py::str(error.type().attr("__name__")).cast<std::string>() +
                  (message.empty() ? "" : ": " + message) + ")";
    }
    throw StateStoreError(message);
}

/// Lets Python classes implement SharedStateStore (driftgate.RedisStateStore does). Called by
/// the manager without the GIL: each method takes it for the Python call only.
class PySharedStateStore : public SharedStateStore {
  public:
    std::optional<std::string> load() override {
        py::gil_scoped_acquire gil;
        try {
            py::object stored = override_of("load")();
            if (stored.is_none()) return std::nullopt;
            return stored.cast<std::string>();
        } catch (py::error_already_set& error) {
            rethrow_store_error(error, "read");
        }
    }

    CommitResult commit(std::uint64_t version, const std::string& document,
                        bool automatic) override {
        py::gil_scoped_acquire gil;
        py::object answer;
        try {
            answer = override_of("commit")(version, document, automatic);
        } catch (py::error_already_set& error) {
            rethrow_store_error(error, "commit");
        }
        // (status, current document or None)
        const auto pair = answer.cast<std::pair<std::string, std::optional<std::string>>>();
        CommitResult result;
        result.current = pair.second;
        if (pair.first == "committed") {
            result.status = CommitStatus::Committed;
        } else if (pair.first == "conflict") {
            result.status = CommitStatus::Conflict;
        } else if (pair.first == "fenced") {
            result.status = CommitStatus::Fenced;
        } else {
            throw StateStoreError("state store commit answered " + detail_quote(pair.first) +
                                  "; expected committed, conflict or fenced");
        }
        return result;
    }

    std::string describe() const override {
        py::gil_scoped_acquire gil;
        return override_of("describe")().cast<std::string>();
    }

  private:
    py::function override_of(const char* name) const {
        py::function method = py::get_override(static_cast<const SharedStateStore*>(this), name);
        if (!method) {
            throw std::logic_error(std::string("a SharedStateStore subclass must define ") + name +
                                   "()");
        }
        return method;
    }

    static std::string detail_quote(const std::string& text) {
        return py::repr(py::str(text)).cast<std::string>();
    }
};

}  // namespace

void register_rollout(py::module_& m) {
    auto& state_error = py::register_exception<StateError>(m, "StateError", PyExc_RuntimeError);
    state_error.doc() =
        "A rollout state file that cannot be used or written; the message names the file.";
    state_error_type = state_error.ptr();
    auto& store_error =
        py::register_exception<StateStoreError>(m, "StateStoreError", state_error.ptr());
    store_error.doc() =
        "A shared rollout state store that cannot be reached or answered nonsense; nothing was "
        "committed. A StateError.";
    state_store_error_type = store_error.ptr();
    auto& outcome_unknown =
        py::register_exception<StateOutcomeUnknown>(m, "StateOutcomeUnknown", store_error.ptr());
    outcome_unknown.doc() =
        "A commit whose outcome the shared store could not tell (it stopped answering after the "
        "commit was sent): the move may have landed. Retry with the same operation id, which is "
        "answered with what happened. A StateStoreError.";
    state_outcome_unknown_type = outcome_unknown.ptr();
    py::register_exception<StateRegressed>(m, "StateRegressed", store_error.ptr()).doc() =
        "The shared store holds an older rollout state than this replica has seen (lost, "
        "flushed or failed over); nothing moves until it is restored. A StateStoreError.";

    py::class_<SharedStateStore, PySharedStateStore, std::shared_ptr<SharedStateStore>>(
        m, "SharedStateStore",
        "Base class of stores that share a rollout's state between processes (compare-and-set "
        "on the version). Subclasses define load(), commit(version, document, automatic) and "
        "describe().")
        .def(py::init<>());
    py::register_exception<ConfigOwnedError>(m, "ConfigOwnedError", PyExc_RuntimeError).doc() =
        "Raised on moving a RolloutConfig that a RolloutManager owns; the message names the "
        "manager method to use.";

    py::class_<RolloutStage>(m, "RolloutStage", "One stage of a staged rollout.")
        .def(py::init([](std::string name, double percentage, py::handle duration,
                         double max_error_rate, bool requires_approval,
                         long long approvals_required) {
                 if (approvals_required < 1 || approvals_required > kMaxApprovals) {
                     throw py::value_error(
                         "approvals_required=" + std::to_string(approvals_required) +
                         ": expected 1 to " + std::to_string(kMaxApprovals));
                 }
                 RolloutStage stage{std::move(name),
                                    percentage,
                                    seconds_arg(duration, "duration"),
                                    max_error_rate,
                                    requires_approval,
                                    static_cast<std::uint32_t>(approvals_required)};
                 validate_stages({stage});
                 return stage;
             }),
             py::arg("name"), py::arg("percentage"), py::arg("duration"), py::arg("max_error_rate"),
             py::arg("requires_approval") = false, py::kw_only(), py::arg("approvals_required") = 1)
        .def_readonly("name", &RolloutStage::name)
        .def_readonly("percentage", &RolloutStage::percentage)
        .def_property_readonly("duration",
                               [](const RolloutStage& s) { return timedelta(s.duration_seconds); })
        .def_readonly("duration_seconds", &RolloutStage::duration_seconds)
        .def_readonly("max_error_rate", &RolloutStage::max_error_rate)
        .def_readonly("requires_approval", &RolloutStage::requires_approval)
        .def_readonly("approvals_required", &RolloutStage::approvals_required,
                      "Distinct people who must approve entering this stage.")
        .def("__eq__",
             [](const RolloutStage& a, const RolloutStage& b) {
                 return a.name == b.name && a.percentage == b.percentage &&
                        a.duration_seconds == b.duration_seconds &&
                        a.max_error_rate == b.max_error_rate &&
                        a.requires_approval == b.requires_approval &&
                        a.approvals_required == b.approvals_required;
             })
        .def("__repr__", [](const RolloutStage& s) {
            return "RolloutStage(" + py::repr(py::str(s.name)).cast<std::string>() + ", " +
                   py::repr(py::float_(s.percentage)).cast<std::string>() + ", " +
                   py::repr(timedelta(s.duration_seconds)).cast<std::string>() + ", " +
                   py::repr(py::float_(s.max_error_rate)).cast<std::string>() + ", " +
                   (s.requires_approval ? "True" : "False") +
                   (s.approvals_required == 1
                        ? std::string()
                        : ", approvals_required=" + std::to_string(s.approvals_required)) +
                   ")";
        });

    m.def(
        "_read_rollout_document",
        [](const RolloutConfig& config, const std::string& document, const std::string& what) {
            const PersistedRollout saved = decode_rollout(
                document, *config.plan(), what, "nothing was changed (is it a driftgate export?)");
            py::dict out;
            out["version"] = saved.version;
            out["incarnation"] = saved.incarnation;
            out["restore_generation"] = saved.restore_generation;
            out["etag"] = entity_tag(saved.incarnation, saved.version);
            return out;
        },
        py::arg("config"), py::arg("document"), py::arg("what"),
        "Checks a rollout document as strictly as a replica loads one (StateError naming "
        "`what`); returns its version, incarnation, restore generation and entity tag.");
    m.def(
        "_restored_rollout_document",
        [](const RolloutConfig& config, const std::string& document, const std::string& what,
           long long restore_generation) {
            PersistedRollout saved = decode_rollout(
                document, *config.plan(), what, "nothing was changed (is it a driftgate export?)");
            saved.restore_generation = size_arg(restore_generation, "restore_generation");
            // An export from before incarnations gets one now, as its next write would give it.
            if (saved.incarnation.empty()) saved.incarnation = random_id();
            return encode_rollout(saved, *config.plan());
        },
        py::arg("config"), py::arg("document"), py::arg("what"), py::arg("restore_generation"),
        "The document as a restore writes it back: checked, with `restore_generation`.");

    py::class_<RolloutConfig>(
        m, "RolloutConfig",
        "The stages of a rollout and where it stands. On its own it moves itself on its own "
        "clock; handed to a RolloutManager it becomes a live, read-only view of the manager's "
        "position.")
        .def(py::init([](std::vector<RolloutStage> stages, long long current_stage_index,
                         py::handle started_at, bool rollback_on_error,
                         std::shared_ptr<Clock> clock) {
                 return RolloutConfig(std::move(stages),
                                      size_arg(current_stage_index, "current_stage_index"),
                                      time_arg(started_at, "current_stage_started_at"),
                                      rollback_on_error, clock_or_system(std::move(clock)));
             }),
             py::arg("stages"), py::arg("current_stage_index") = 0,
             py::arg("current_stage_started_at") = py::none(), py::arg("rollback_on_error") = true,
             py::kw_only(), py::arg("clock") = py::none())
        .def_static(
            "default",
            [](std::shared_ptr<Clock> clock) {
                return RolloutConfig::default_config(clock_or_system(std::move(clock)));
            },
            py::kw_only(), py::arg("clock") = py::none(),
            "canary 10% -> quarter 25% -> half 50% -> most 75% -> full 100%.")
        .def_property_readonly("stages", &RolloutConfig::stages)
        .def_property("current_stage_index", &RolloutConfig::current_stage_index,
                      [](RolloutConfig& c, long long index) {
                          c.set_current_stage_index(size_arg(index, "current_stage_index"));
                      })
        .def_property(
            "current_stage_started_at",
            [](const RolloutConfig& c) { return optional_time(c.current_stage_started_at()); },
            [](RolloutConfig& c, py::handle value) {
                c.set_current_stage_started_at(time_arg(value, "current_stage_started_at"));
            })
        .def_property_readonly("rollback_on_error", &RolloutConfig::rollback_on_error)
        .def_property_readonly("owned", &RolloutConfig::owned,
                               "True while a RolloutManager owns this config.")
        .def_property_readonly("fingerprint",
                               [](const RolloutConfig& c) { return c.plan()->fingerprint(); })
        .def("current_stage", &RolloutConfig::current_stage)
        .def(
            "can_advance",
            [](const RolloutConfig& c, double error_rate) { return c.can_advance(error_rate); },
            py::arg("error_rate"))
        .def("advance", py::overload_cast<>(&RolloutConfig::advance))
        .def("rollback", py::overload_cast<>(&RolloutConfig::rollback));

    py::native_enum<DecisionAction>(m, "DecisionAction", "enum.Enum",
                                    "What a rollout decision did.")
        .value("ADVANCED", DecisionAction::Advanced)
        .value("RESUMED", DecisionAction::Resumed)
        .value("ROLLED_BACK", DecisionAction::RolledBack)
        .value("ABORTED", DecisionAction::Aborted)
        .value("HELD", DecisionAction::Held)
        .value("WAITING_FOR_APPROVAL", DecisionAction::WaitingForApproval)
        .value("INSUFFICIENT_DATA", DecisionAction::InsufficientData)
        .value("AT_FINAL_STAGE", DecisionAction::AtFinalStage)
        .value("ALREADY_ABORTED", DecisionAction::AlreadyAborted)
        .value("ANALYSIS_FAILED", DecisionAction::AnalysisFailed)
        .value("CONFLICT", DecisionAction::Conflict)
        .value("APPROVAL_RECORDED", DecisionAction::ApprovalRecorded)
        .value("ALREADY_APPROVED", DecisionAction::AlreadyApproved)
        .finalize();

    py::class_<Decision>(m, "Decision",
                         "The outcome of one rollout decision. Unpacks as (success, message); "
                         "also says what happened, from where to where, and the version after.")
        .def_readonly("success", &Decision::success)
        .def_readonly("message", &Decision::message)
        .def_readonly("action", &Decision::action)
        .def_readonly("from_stage", &Decision::from_stage)
        .def_readonly("to_stage", &Decision::to_stage)
        .def_readonly("from_percentage", &Decision::from_percentage)
        .def_readonly("to_percentage", &Decision::to_percentage)
        .def_readonly("version", &Decision::version)
        .def_property_readonly("state",
                               [](const Decision& d) { return std::string(to_string(d.state)); })
        .def_readonly("error_rate", &Decision::error_rate)
        .def_readonly("actor", &Decision::actor)
        .def_readonly("reason", &Decision::reason,
                      "The history's reason for a move or a recorded approval; '' otherwise.")
        .def_readonly("operation", &Decision::operation,
                      "The id of the operation that moved the rollout; '' when nothing moved.")
        .def_readonly("replayed", &Decision::replayed,
                      "True when the operation had already been applied: its first outcome.")
        .def_property_readonly("moved", &Decision::moved,
                               "True when the rollout changed stage (or aborted or resumed).")
        .def("as_dict", &decision_dict,
             "JSON-ready: the fields, with `action` and `state` as lower-case codes.")
        .def("__len__", [](const Decision&) { return 2; })
        .def("__iter__",
             [](const Decision& d) { return py::iter(py::make_tuple(d.success, d.message)); })
        .def("__getitem__",
             [](const Decision& d, py::object index) {
                 return py::make_tuple(d.success, d.message).attr("__getitem__")(index);
             })
        .def(
            "__eq__",
            [](const Decision& d, py::handle other) -> py::object {
                if (py::isinstance<Decision>(other)) {
                    return py::bool_(decision_dict(d).equal(decision_dict(other.cast<Decision>())));
                }
                if (py::isinstance<py::tuple>(other)) {
                    return py::bool_(py::make_tuple(d.success, d.message).equal(other));
                }
                return py::reinterpret_borrow<py::object>(Py_NotImplemented);
            })
        .def("__hash__",
             [](const Decision& d) { return py::hash(py::make_tuple(d.success, d.message)); })
        .def("__repr__", [](const Decision& d) {
            return "Decision(" + std::string(d.success ? "True" : "False") + ", " +
                   py::repr(py::str(d.message)).cast<std::string>() +
                   ", action=" + std::string(to_string(d.action)) + ", " + d.from_stage + " -> " +
                   d.to_stage + ", version=" + std::to_string(d.version) + ")";
        });

    py::class_<RolloutManager, std::shared_ptr<RolloutManager>>(
        m, "_RolloutManager", "The C++ rollout state machine; use driftgate.RolloutManager.")
        .def(py::init([](const RolloutConfig& config, std::shared_ptr<Enforcer> enforcer,
                         std::shared_ptr<MetricsRegistry> registry,
                         std::optional<std::string> state_path, std::shared_ptr<Clock> clock,
                         long long min_requests, std::optional<double> confidence,
                         std::shared_ptr<SharedStateStore> store, std::string rollout,
                         py::object policies, const std::string& cohort) {
                 RolloutManager::Options options;
                 options.enforcer = std::move(enforcer);
                 options.registry = std::move(registry);
                 options.state_path = std::move(state_path);
                 options.store = std::move(store);
                 options.clock = std::move(clock);
                 options.min_requests = size_arg(min_requests, "min_requests");
                 options.confidence = confidence;
                 options.rollout = std::move(rollout);
                 options.cohort = parse_cohort(cohort);
                 if (!policies.is_none()) {
                     // One string is not a list of one policy.
                     if (py::isinstance<py::str>(policies) || py::isinstance<py::bytes>(policies)) {
                         throw py::type_error("policies=" + short_repr(policies) +
                                              ": expected a list of policy ids or None");
                     }
                     options.policies = policies.cast<std::vector<std::string>>();
                 }
                 py::gil_scoped_release release;  // reads the state file
                 return std::make_shared<RolloutManager>(config, std::move(options));
             }),
             py::arg("config"), py::arg("enforcer") = py::none(), py::arg("registry") = py::none(),
             py::arg("state_path") = py::none(), py::arg("clock") = py::none(),
             py::arg("min_requests") = 0, py::arg("confidence") = py::none(),
             py::arg("store") = py::none(), py::kw_only(),
             py::arg("rollout") = std::string(kDefaultRollout), py::arg("policies") = py::none(),
             py::arg("cohort") = "independent")
        .def("evaluate", &RolloutManager::evaluate, py::arg("error_rate"),
             py::arg("requests") = py::none(), py::kw_only(), py::arg("read_at") = py::none(),
             py::call_guard<py::gil_scoped_release>(),
             "The synchronous decision on an error rate; with read_at (the version the rate "
             "was read at), nothing is judged once the rollout has moved since.")
        .def("evaluate_counts", &RolloutManager::evaluate_counts, py::arg("failed"),
             py::arg("total"), py::kw_only(), py::arg("read_at") = py::none(),
             py::call_guard<py::gil_scoped_release>(),
             "The synchronous decision on (failed, total); Wilson bounds with confidence.")
        .def(
            "manual_advance",
            [](RolloutManager& manager, std::optional<std::string> actor,
               std::optional<std::string> reason, std::optional<long long> expected_version,
               std::optional<std::string> expected_incarnation,
               std::optional<std::string> operation, std::optional<std::string> person) {
                const auto expected = version_arg(expected_version);
                py::gil_scoped_release release;
                return manager.manual_advance(actor.value_or("manual"), reason.value_or(""),
                                              expected, std::move(expected_incarnation),
                                              operation.value_or(""), std::move(person));
            },
            py::arg("actor") = py::none(), py::arg("reason") = py::none(), py::kw_only(),
            py::arg("expected_version") = py::none(), py::arg("expected_incarnation") = py::none(),
            py::arg("operation") = py::none(), py::arg("person") = py::none())
        .def(
            "manual_rollback",
            [](RolloutManager& manager, std::optional<std::string> actor,
               std::optional<std::string> reason, std::optional<long long> expected_version,
               std::optional<std::string> expected_incarnation,
               std::optional<std::string> operation) {
                const auto expected = version_arg(expected_version);
                py::gil_scoped_release release;
                return manager.manual_rollback(actor.value_or("manual"), reason.value_or(""),
                                               expected, std::move(expected_incarnation),
                                               operation.value_or(""));
            },
            py::arg("actor") = py::none(), py::arg("reason") = py::none(), py::kw_only(),
            py::arg("expected_version") = py::none(), py::arg("expected_incarnation") = py::none(),
            py::arg("operation") = py::none())
        .def(
            "follow",
            [](RolloutManager& manager, const std::string& document,
               std::optional<long long> read_at) {
                const auto held = version_arg(read_at);
                py::gil_scoped_release release;
                return manager.follow(document, held);
            },
            py::arg("document"), py::arg("read_at") = py::none(),
            "Adopts a stored document if it is newer than what this manager holds.")
        .def("refresh", &RolloutManager::refresh, py::call_guard<py::gil_scoped_release>(),
             "Re-reads the shared store and follows it; returns the version held.")
        .def(
            "_note_announced",
            [](RolloutManager& manager, long long version, const std::string& incarnation,
               long long restore_generation, const std::string& operation) {
                const auto at = size_arg(version, "version");
                const auto generation = size_arg(restore_generation, "restore_generation");
                py::gil_scoped_release release;
                return manager.note_announced(at, incarnation, generation, operation);
            },
            py::arg("version"), py::arg("incarnation"), py::arg("restore_generation"),
            py::arg("operation"),
            "Notes a commit the shared store announced (its hint), which a later read must find.")
        .def_property_readonly(
            "regressed",
            [](const RolloutManager& manager) -> std::optional<std::string> {
                std::string why;
                {
                    py::gil_scoped_release release;
                    why = manager.regressed();
                }
                if (why.empty()) return std::nullopt;
                return why;
            },
            "Why the shared store is behind what this replica has seen (None while it is not).")
        .def("_count_notification", &RolloutManager::count_notification, py::arg("sink"),
             py::arg("event"), py::arg("outcome"), py::call_guard<py::gil_scoped_release>())
        .def(
            "_adopt_evidence",
            [](RolloutManager& manager, long long stage_index, const std::string& state,
               double started_at, double error_rate, std::optional<long long> requests,
               std::optional<long long> failed) {
                const auto parsed = parse_rollout_state(state);
                if (!parsed) throw py::value_error("unknown rollout state " + state);
                RolloutPosition at{size_arg(stage_index, "stage_index"), started_at, *parsed};
                Evidence evidence{error_rate, std::nullopt, std::nullopt};
                if (requests) evidence.requests = size_arg(*requests, "requests");
                if (failed) evidence.failed = size_arg(*failed, "failed");
                py::gil_scoped_release release;
                return manager.adopt_evidence(at, evidence);
            },
            py::arg("stage_index"), py::arg("state"), py::arg("started_at"), py::arg("error_rate"),
            py::arg("requests") = py::none(), py::arg("failed") = py::none())
        .def("_note_store", &RolloutManager::note_store, py::arg("up"), py::arg("sync_age_seconds"),
             py::call_guard<py::gil_scoped_release>())
        .def_property_readonly(
            "synced",
            [](const RolloutManager& manager) {
                // Never wait for the manager's lock holding the GIL: a commit holds that lock
                // while it calls a Python store.
                py::gil_scoped_release release;
                return manager.synced();
            },
            "False while the shared state has not been read (the manager then enforces 0 %).")
        .def_property_readonly(
            "version",
            [](const RolloutManager& manager) {
                py::gil_scoped_release release;
                return manager.version();
            },
            "The version of the rollout state this manager holds.")
        .def("_hold", &RolloutManager::hold, py::arg("message"),
             py::arg("action") = DecisionAction::Held, py::call_guard<py::gil_scoped_release>())
        .def("record_analysis_error", &RolloutManager::record_analysis_error)
        .def_property_readonly("config", &RolloutManager::config,
                               "A live, read-only view of the rollout: stages and position.")
        .def_property_readonly("enforced_percentage",
                               [](const RolloutManager& manager) {
                                   py::gil_scoped_release release;
                                   return manager.enforced_percentage();
                               })
        .def_property(
            "min_requests",
            [](const RolloutManager& manager) {
                py::gil_scoped_release release;
                return manager.min_requests();
            },
            [](RolloutManager& manager, long long value) {
                const std::uint64_t min_requests = size_arg(value, "min_requests");
                py::gil_scoped_release release;
                manager.set_min_requests(min_requests);
            },
            "Requests a decision needs before it may advance; settable while the rollout runs.")
        .def_property_readonly("confidence", &RolloutManager::confidence)
        .def_property_readonly("rollout", &RolloutManager::rollout,
                               "The rollout's name: its metrics' `rollout` label.")
        .def_property_readonly("policies", &RolloutManager::policies,
                               "The policies this rollout governs; None: every policy no other "
                               "rollout names (the enforcer's global percent).")
        .def_property_readonly(
            "cohort",
            [](const RolloutManager& manager) { return std::string(to_string(manager.cohort())); },
            "'independent' (keys hashed with the rollout's own seed) or 'shared' (the "
            "enforcer's); a rollout without policies samples the enforcer's own cohort.")
        .def_property_readonly("enforcer", &RolloutManager::enforcer)
        .def_property_readonly("registry", &RolloutManager::registry)
        .def(
            "_document",
            [](const RolloutManager& manager) -> std::optional<std::string> {
                RolloutManager::Snapshot s;
                {
                    py::gil_scoped_release release;
                    s = manager.snapshot();
                }
                if (!s.synced || s.version == 0) return std::nullopt;
                PersistedRollout state;
                state.stage_index = s.position.stage_index;
                state.started_at = s.position.started_at.value_or(s.now);
                state.state = s.position.state;
                state.version = s.version;
                state.transitions = s.transitions;
                state.approvals = s.approvals;
                state.incarnation = s.incarnation;
                state.restore_generation = s.restore_generation;
                return encode_rollout(state, *s.plan);
            },
            "The rollout document of the state held (as a state file or store holds it), or None "
            "before the state has been read.")
        .def(
            "_moment",
            [](const RolloutManager& manager) {
                RolloutManager::Moment m;
                {
                    py::gil_scoped_release release;
                    m = manager.moment();
                }
                return py::make_tuple(m.publication, m.now, m.started_at,
                                      std::string(to_string(m.judgement.waiting_for)),
                                      m.judgement.reason);
            },
            "(publication, now, stage started at, waiting for, waiting reason) of the snapshot "
            "published now, without copying it.")
        .def("_snapshot", [](const RolloutManager& manager) {
            RolloutManager::Snapshot s;
            {
                py::gil_scoped_release release;
                s = manager.snapshot();
            }
            py::dict out;
            out[key("stages")] = s.plan->stages();
            out[key("stage_index")] = s.position.stage_index;
            out[key("started_at")] = s.position.started_at.value_or(s.now);
            out[key("now")] = s.now;
            out[key("state")] = std::string(to_string(s.position.state));
            out[key("version")] = s.version;
            out[key("enforced_percentage")] = s.enforced_percentage;
            out[key("last_error_rate")] = s.last_error_rate;
            const Judgement judgement = s.judgement();
            out[key("next_action")] = std::string(to_string(judgement.action));
            out[key("waiting_for")] = std::string(to_string(judgement.waiting_for));
            out[key("waiting_reason")] = judgement.reason;
            out[key("min_requests")] = s.min_requests;
            out[key("advance_target")] = s.plan->advance_target(s.position);
            if (s.evidence && s.evidence->requests) {
                out[key("stage_requests")] = *s.evidence->requests;
            } else {
                out[key("stage_requests")] = py::none();
            }
            if (s.evidence) {
                py::dict evidence;
                evidence["error_rate"] = s.evidence->error_rate;
                evidence["requests"] = s.evidence->requests;
                evidence["failed"] = s.evidence->failed;
                out[key("evidence")] = evidence;
            } else {
                out[key("evidence")] = py::none();
            }
            py::list transitions;
            for (const auto& t : s.transitions) transitions.append(transition_dict(t));
            out[key("transitions")] = transitions;
            out[key("state_path")] = s.state_path;
            out[key("synced")] = s.synced;
            out[key("approvals")] = s.approvals;
            out[key("incarnation")] = s.incarnation;
            out[key("restore_generation")] = s.restore_generation;
            out[key("regressed")] =
                s.regressed.empty() ? py::object(py::none()) : py::object(py::str(s.regressed));
            out[key("store")] = manager.store() ? py::object(py::str(manager.store()->describe()))
                                                : py::object(py::none());
            out[key("rollback_on_error")] = s.plan->rollback_on_error();
            out[key("rollout")] = manager.rollout();
            out[key("policies")] = manager.policies();
            out[key("publication")] = s.publication;
            out[key("announced")] = s.announced;
            return out;
        });
}

}  // namespace driftgate::bindings
