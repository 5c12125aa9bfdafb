#include <pybind11/stl.h>

#include <cmath>

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

py::dict transition_dict(const Transition& t) {
    py::dict out;
    out["time"] = utc_datetime(t.time);
    out["actor"] = t.actor;
    out["from"] = t.from;
    out["to"] = t.to;
    out["reason"] = t.reason;
    return out;
}

}  // namespace

void register_rollout(py::module_& m) {
    py::register_exception<StateError>(m, "StateError", PyExc_RuntimeError).doc() =
        "A rollout state file that cannot be used or written; the message names the file.";

    py::class_<RolloutStage>(m, "RolloutStage", "One stage of a staged rollout.")
        .def(py::init([](std::string name, double percentage, py::handle duration,
                         double max_error_rate, bool requires_approval) {
                 RolloutStage stage{std::move(name), percentage, seconds_arg(duration, "duration"),
                                    max_error_rate, requires_approval};
                 validate_stages({stage});
                 return stage;
             }),
             py::arg("name"), py::arg("percentage"), py::arg("duration"), py::arg("max_error_rate"),
             py::arg("requires_approval") = false)
        .def_readonly("name", &RolloutStage::name)
        .def_readonly("percentage", &RolloutStage::percentage)
        .def_property_readonly("duration",
                               [](const RolloutStage& s) { return timedelta(s.duration_seconds); })
        .def_readonly("duration_seconds", &RolloutStage::duration_seconds)
        .def_readonly("max_error_rate", &RolloutStage::max_error_rate)
        .def_readonly("requires_approval", &RolloutStage::requires_approval)
        .def("__eq__",
             [](const RolloutStage& a, const RolloutStage& b) {
                 return a.name == b.name && a.percentage == b.percentage &&
                        a.duration_seconds == b.duration_seconds &&
                        a.max_error_rate == b.max_error_rate &&
                        a.requires_approval == b.requires_approval;
             })
        .def("__repr__", [](const RolloutStage& s) {
            return "RolloutStage(" + py::repr(py::str(s.name)).cast<std::string>() + ", " +
                   py::repr(py::float_(s.percentage)).cast<std::string>() + ", " +
                   py::repr(timedelta(s.duration_seconds)).cast<std::string>() + ", " +
                   py::repr(py::float_(s.max_error_rate)).cast<std::string>() + ", " +
                   (s.requires_approval ? "True" : "False") + ")";
        });

    py::class_<RolloutConfig>(m, "RolloutConfig",
                              "The stages of a rollout and where it stands. A standalone config "
                              "reads the system clock.")
        .def(py::init([](std::vector<RolloutStage> stages, long long current_stage_index,
                         py::handle started_at, bool rollback_on_error) {
                 return RolloutConfig(
                     std::move(stages), size_arg(current_stage_index, "current_stage_index"),
                     time_arg(started_at, "current_stage_started_at"), rollback_on_error);
             }),
             py::arg("stages"), py::arg("current_stage_index") = 0,
             py::arg("current_stage_started_at") = py::none(), py::arg("rollback_on_error") = true)
        .def_static("default", &RolloutConfig::default_config,
                    "canary 10% -> quarter 25% -> half 50% -> most 75% -> full 100%.")
        .def_property_readonly("stages", &RolloutConfig::stages)
        .def_property("current_stage_index", &RolloutConfig::current_stage_index,
                      [](RolloutConfig& c, long long index) {
                          c.set_current_stage_index(size_arg(index, "current_stage_index"));
                      })
        .def_property(
            "current_stage_started_at",
            [](const RolloutConfig& c) -> py::object {
                const auto started = c.current_stage_started_at();
                return started ? utc_datetime(*started) : py::none();
            },
            [](RolloutConfig& c, py::handle value) {
                c.set_current_stage_started_at(time_arg(value, "current_stage_started_at"));
            })
        .def_property_readonly("rollback_on_error", &RolloutConfig::rollback_on_error)
        .def_property_readonly(
            "fingerprint", [](const RolloutConfig& c) { return stages_fingerprint(c.stages()); })
        .def("current_stage", &RolloutConfig::current_stage)
        .def(
            "can_advance",
            [](const RolloutConfig& c, double error_rate) {
                return c.can_advance(error_rate, SystemClock::instance()->wall());
            },
            py::arg("error_rate"))
        .def("advance", [](RolloutConfig& c) { c.advance(SystemClock::instance()->wall()); })
        .def("rollback", [](RolloutConfig& c) { c.rollback(SystemClock::instance()->wall()); });

    py::class_<RolloutManager, std::shared_ptr<RolloutManager>>(
        m, "_RolloutManager", "The C++ rollout state machine; use driftgate.RolloutManager.")
        .def(py::init([](const RolloutConfig& config, std::shared_ptr<Enforcer> enforcer,
                         std::shared_ptr<MetricsRegistry> registry,
                         std::optional<std::string> state_path, std::shared_ptr<Clock> clock,
                         long long min_requests, std::optional<double> confidence) {
                 RolloutManager::Options options;
                 options.enforcer = std::move(enforcer);
                 options.registry = std::move(registry);
                 options.state_path = std::move(state_path);
                 options.clock = std::move(clock);
                 options.min_requests = size_arg(min_requests, "min_requests");
                 options.confidence = confidence;
                 py::gil_scoped_release release;  // reads the state file
                 return std::make_shared<RolloutManager>(config, std::move(options));
             }),
             py::arg("config"), py::arg("enforcer") = py::none(), py::arg("registry") = py::none(),
             py::arg("state_path") = py::none(), py::arg("clock") = py::none(),
             py::arg("min_requests") = 0, py::arg("confidence") = py::none())
        .def("evaluate", &RolloutManager::evaluate, py::arg("error_rate"),
             py::arg("requests") = py::none(), py::call_guard<py::gil_scoped_release>(),
             "The synchronous decision on an error rate; returns (advanced, message).")
        .def("evaluate_counts", &RolloutManager::evaluate_counts, py::arg("failed"),
             py::arg("total"), py::call_guard<py::gil_scoped_release>(),
             "The synchronous decision on (failed, total); Wilson bounds with confidence.")
        .def(
            "manual_advance",
            [](RolloutManager& manager, std::optional<std::string> actor) {
                py::gil_scoped_release release;
                return manager.manual_advance(actor.value_or("manual"));
            },
            py::arg("actor") = py::none())
        .def(
            "manual_rollback",
            [](RolloutManager& manager, std::optional<std::string> actor,
               std::optional<std::string> reason) {
                py::gil_scoped_release release;
                return manager.manual_rollback(actor.value_or("manual"), reason.value_or(""));
            },
            py::arg("actor") = py::none(), py::arg("reason") = py::none())
        .def("record_analysis_error", &RolloutManager::record_analysis_error)
        .def_property_readonly("enforced_percentage", &RolloutManager::enforced_percentage)
        .def_property_readonly("min_requests", &RolloutManager::min_requests)
        .def_property_readonly("confidence", &RolloutManager::confidence)
        .def_property_readonly("enforcer", &RolloutManager::enforcer)
        .def_property_readonly("registry", &RolloutManager::registry)
        .def("_snapshot", [](const RolloutManager& manager) {
            RolloutManager::Snapshot s;
            {
                py::gil_scoped_release release;
                s = manager.snapshot();
            }
            py::dict out;
            out["stages"] = s.stages;
            out["stage_index"] = s.stage_index;
            out["started_at"] = utc_datetime(s.started_at);
            out["now"] = utc_datetime(s.now);
            out["elapsed_seconds"] = s.now - s.started_at;
            out["state"] = std::string(to_string(s.state));
            out["version"] = s.version;
            out["enforced_percentage"] = s.enforced_percentage;
            out["last_error_rate"] = s.last_error_rate;
            py::list transitions;
            for (const auto& t : s.transitions) transitions.append(transition_dict(t));
            out["transitions"] = transitions;
            out["state_path"] = s.state_path;
            return out;
        });
}

}  // namespace driftgate::bindings
