#include "bindings.hpp"

namespace driftgate::bindings {

void register_metrics(py::module_& m) {
    py::class_<MetricsRegistry, std::shared_ptr<MetricsRegistry>>(
        m, "MetricsRegistry", "A prometheus-cpp registry with Prometheus text exposition.")
        .def(py::init<>())
        .def("exposition", &MetricsRegistry::exposition, py::call_guard<py::gil_scoped_release>(),
             "Everything registered, in the Prometheus text format 0.0.4.");

    m.def("default_registry", &MetricsRegistry::default_registry,
          "The process-wide registry that components use when given none.");
}

}  // namespace driftgate::bindings
