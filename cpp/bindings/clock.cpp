#include "bindings.hpp"

namespace driftgate::bindings {

void register_clock(py::module_& m) {
    py::class_<Clock, std::shared_ptr<Clock>>(m, "Clock",
                                              "A source of monotonic and wall-clock seconds.")
        .def("now", &Clock::now, "Monotonic seconds, for rolling windows.")
        .def("wall", &Clock::wall, "Unix seconds, for durations and persisted timestamps.");

    py::class_<SystemClock, Clock, std::shared_ptr<SystemClock>>(
        m, "SystemClock", "The process clocks: steady for now(), system for wall().")
        .def(py::init([] { return SystemClock::instance(); }))
        .def("__repr__", [](const SystemClock&) { return "SystemClock()"; });

    py::class_<ManualClock, Clock, std::shared_ptr<ManualClock>>(
        m, "ManualClock", "A clock that moves only when told to; now() and wall() agree.")
        .def(py::init<double>(), py::arg("start") = 0.0)
        .def("advance", &ManualClock::advance, py::arg("seconds"),
             "Moves forward by seconds (finite, >= 0).")
        .def("set", &ManualClock::set, py::arg("seconds"), "Moves to seconds, backwards too.")
        .def("__repr__", [](const ManualClock& clock) {
            return "ManualClock(" + py::repr(py::float_(clock.now())).cast<std::string>() + ")";
        });
}

}  // namespace driftgate::bindings
