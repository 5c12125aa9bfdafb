#include <pybind11/stl.h>

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

    py::class_<StoreClock, Clock, std::shared_ptr<StoreClock>>(
        m, "StoreClock",
        "A shared store's wall time, kept through the base clock's monotonic now(): wall() is "
        "the last reading plus the monotonic time since (the base's wall time before the first "
        "reading); now() is the base's.")
        .def(py::init([](std::shared_ptr<Clock> base) {
                 return std::make_shared<StoreClock>(base ? std::move(base)
                                                          : SystemClock::instance());
             }),
             py::arg("base") = nullptr)
        .def_property_readonly("base", &StoreClock::base, "The clock this one follows.")
        .def("observe", &StoreClock::observe, py::arg("store_wall"), py::arg("at"),
             "Records a reading: the store's unix seconds as of the base's monotonic `at`.")
        .def("age", &StoreClock::age,
             "Seconds since the reading in force was taken (None before the first).")
        .def("skew", &StoreClock::skew,
             "This machine's wall time minus the store's, in seconds (None before the first "
             "reading).")
        .def("__repr__", [](const StoreClock& clock) {
            return "StoreClock(" + py::repr(py::cast(clock.base())).cast<std::string>() + ")";
        });
}

}  // namespace driftgate::bindings
