#include <pybind11/stl.h>

#include "bindings.hpp"
#include "driftgate/readiness_gate.hpp"
#include "driftgate/statistics.hpp"

namespace driftgate::bindings {

namespace {

GateConfig make_gate_config(bool enabled, std::string window, double max_ratio,
                            long long min_requests, std::optional<double> reopen_ratio,
                            std::optional<double> confidence) {
    GateConfig config{enabled,      std::move(window),
                      max_ratio,    size_arg(min_requests, "min_requests"),
                      reopen_ratio, confidence};
    config.validate();
    return config;
}

py::tuple check_tuple(std::pair<bool, std::string_view> result) {
    return py::make_tuple(result.first, std::string(result.second));
}

}  // namespace

void register_gate(py::module_& m) {
    py::class_<GateConfig>(m, "GateConfig", "When readiness fails on drift. Off by default.")
        .def(py::init(&make_gate_config), py::arg("enabled") = false, py::arg("window") = "5m",
             py::arg("max_ratio") = 0.005, py::arg("min_requests") = 100,
             py::arg("reopen_ratio") = py::none(), py::arg("confidence") = py::none())
        .def_readonly("enabled", &GateConfig::enabled)
        .def_readonly("window", &GateConfig::window)
        .def_readonly("max_ratio", &GateConfig::max_ratio)
        .def_readonly("min_requests", &GateConfig::min_requests)
        .def_readonly("reopen_ratio", &GateConfig::reopen_ratio)
        .def_readonly("confidence", &GateConfig::confidence)
        .def("__repr__", [](const GateConfig& c) {
            return "GateConfig(enabled=" + std::string(c.enabled ? "True" : "False") +
                   ", window=" + py::repr(py::str(c.window)).cast<std::string>() +
                   ", max_ratio=" + py::repr(py::float_(c.max_ratio)).cast<std::string>() + ")";
        });

    py::class_<ReadinessGate, std::shared_ptr<ReadinessGate>>(
        m, "ReadinessGate", "Drift above the limit means not ready, with hysteresis. Thread-safe.")
        .def(
            py::init<GateConfig, std::shared_ptr<DriftTracker>, std::shared_ptr<MetricsRegistry>>(),
            py::arg("config"), py::arg("tracker"), py::arg("registry") = py::none())
        .def(
            "check",
            // With the GIL held: the check is a few loads while nothing was recorded since the
            // last one, far less than what giving the GIL away and taking it back costs a
            // probe under load (the event loop may keep it for a switch interval).
            [](ReadinessGate& gate) { return check_tuple(gate.check()); },
            "(True, 'OK') or (False, 'DRIFT_GATE').")
        .def("reopens_within", &ReadinessGate::reopens_within,
             "While closed, seconds until the drift that keeps it closed has left its window "
             "(it then reopens, with or without traffic); None while open.")
        .def_property_readonly("config", &ReadinessGate::config)
        .def_property_readonly("is_open", &ReadinessGate::is_open);

    m.def(
        "readiness_gate_ok",
        [](const GateConfig& config, const DriftTracker& tracker) {
            return check_tuple(readiness_gate_ok(config, tracker));
        },
        py::arg("cfg"), py::arg("tracker"), "The stateless gate check of the seeds.");

    m.def(
        "wilson_bounds",
        [](std::uint64_t events, std::uint64_t total, double confidence) {
            const WilsonBounds bounds = wilson_bounds(events, total, confidence);
            return py::make_tuple(bounds.lower, bounds.upper);
        },
        py::arg("events"), py::arg("total"), py::arg("confidence"),
        "One-sided Wilson score bounds (lower, upper) of events / total.");
}

}  // namespace driftgate::bindings
