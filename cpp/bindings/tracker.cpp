#include <pybind11/stl.h>

#include <cmath>

#include "bindings.hpp"
#include "driftgate/drift_tracker.hpp"
#include "fast_method.hpp"

namespace driftgate::bindings {

namespace {

/// A contiguous 1-D buffer of bytes (bytes, bytearray, numpy uint8, ...), released on scope
/// exit. The memory stays valid while the GIL is released: the view holds its exporter.
class ByteBuffer {
  public:
    ByteBuffer(py::handle object, const char* argument) {
        if (PyObject_GetBuffer(object.ptr(), &view_, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) {
            PyErr_Clear();
            throw py::type_error(std::string("record_batch: ") + argument +
                                 " must be a contiguous buffer of uint8 verdict codes (bytes or "
                                 "numpy uint8), got " +
                                 Py_TYPE(object.ptr())->tp_name);
        }
        const std::string_view format = view_.format ? view_.format : "B";
        if (view_.itemsize != 1 || view_.ndim > 1 || (format != "B" && format != "=B")) {
            const std::string got(format);
            PyBuffer_Release(&view_);
            throw py::type_error(std::string("record_batch: ") + argument +
                                 " must be a 1-D buffer of uint8 verdict codes, got format '" +
                                 got + "'");
        }
    }
    ~ByteBuffer() { PyBuffer_Release(&view_); }
    ByteBuffer(const ByteBuffer&) = delete;
    ByteBuffer& operator=(const ByteBuffer&) = delete;

    std::span<const std::uint8_t> span() const {
        return {static_cast<const std::uint8_t*>(view_.buf), static_cast<std::size_t>(view_.len)};
    }

  private:
    Py_buffer view_{};
};

std::optional<std::string> policy_arg(const std::optional<py::handle>& policy_id) {
    if (!policy_id || policy_id->is_none()) return std::nullopt;
    return std::string(text_arg(*policy_id, "policy_id", false));
}

py::object record_fast(py::handle self, PyObject* const* args, Py_ssize_t nargs,
                       PyObject* kwnames) {
    // Arguments are converted by hand: no caster on the hot path, and a bad verdict is a
    // ValueError that names it.
    DriftTracker& tracker = self_as<DriftTracker>(self);
    const auto [policy_id, shadow, enforced] =
        match_arguments<3>("record", {"policy_id", "shadow", "enforced"}, args, nargs, kwnames);
    const std::string_view policy = text_arg(policy_id, "policy_id", false);
    const Verdict s = verdict_arg(shadow, "shadow");
    const Verdict e = verdict_arg(enforced, "enforced");
    return py::bool_(tracker.record(policy, s, e));
}

py::tuple counts_tuple(const WindowCounts& counts) {
    return py::make_tuple(counts.events, counts.total);
}

}  // namespace

void register_tracker(py::module_& m) {
    py::class_<WindowSpec>(m, "WindowSpec",
                           "A named rolling window of `buckets` buckets of `step_seconds` each.")
        .def(
            py::init([](std::string name, long long buckets, double step_seconds) {
                if (buckets < 1 || buckets > 100000) {
                    throw py::value_error("window '" + name + "' has buckets=" +
                                          std::to_string(buckets) + ": expected 1..100000");
                }
                WindowSpec spec{std::move(name), static_cast<std::uint32_t>(buckets), step_seconds};
                validate_windows({spec});
                return spec;
            }),
            py::arg("name"), py::arg("buckets"), py::arg("step_seconds"))
        .def_readonly("name", &WindowSpec::name)
        .def_readonly("buckets", &WindowSpec::buckets)
        .def_readonly("step_seconds", &WindowSpec::step_seconds)
        .def_property_readonly("span_seconds", &WindowSpec::span_seconds)
        .def("__eq__",
             [](const WindowSpec& a, const WindowSpec& b) {
                 return a.name == b.name && a.buckets == b.buckets &&
                        a.step_seconds == b.step_seconds;
             })
        .def("__hash__",
             [](const WindowSpec& w) {
                 return py::hash(py::make_tuple(w.name, w.buckets, w.step_seconds));
             })
        .def("__repr__", [](const WindowSpec& w) {
            return "WindowSpec(" + py::repr(py::str(w.name)).cast<std::string>() + ", " +
                   std::to_string(w.buckets) + ", " +
                   py::repr(py::float_(w.step_seconds)).cast<std::string>() + ")";
        });

    m.def("default_windows", &default_windows, "5m = 60 x 5 s, 15m = 60 x 15 s, 60m = 60 x 60 s.");

    py::class_<DriftTracker, std::shared_ptr<DriftTracker>> tracker(
        m, "DriftTracker",
        "Counts, per policy and in rolling windows, how often the enforced verdict differs "
        "from the shadow verdict. Thread-safe; record() is lock-free.");
    tracker
        .def(py::init([](std::optional<std::vector<WindowSpec>> windows,
                         std::shared_ptr<Clock> clock, std::shared_ptr<MetricsRegistry> registry,
                         long long max_policies) {
                 return std::make_shared<DriftTracker>(
                     windows ? std::move(*windows) : default_windows(), std::move(clock),
                     registry_or_default(std::move(registry)),
                     size_arg(max_policies, "max_policies"));
             }),
             py::arg("windows") = py::none(), py::arg("clock") = py::none(),
             py::arg("registry") = py::none(), py::arg("max_policies") = 256)
        .def(
            "record_batch",
            [](DriftTracker& tracker, py::handle policy_id, py::handle shadow,
               py::handle enforced) {
                const std::string policy(text_arg(policy_id, "policy_id", false));
                const ByteBuffer shadow_codes(shadow, "shadow");
                const ByteBuffer enforced_codes(enforced, "enforced");
                py::gil_scoped_release release;
                return tracker.record_batch(policy, shadow_codes.span(), enforced_codes.span());
            },
            py::arg("policy_id"), py::arg("shadow"), py::arg("enforced"),
            "Records pairs of verdict codes (0 ok, 1 warn, 2 fail); returns the drift count.")
        .def(
            "counts",
            [](const DriftTracker& tracker, const std::string& window,
               std::optional<py::handle> policy_id) {
                const auto policy = policy_arg(policy_id);
                WindowCounts counts;
                {
                    py::gil_scoped_release release;
                    counts = tracker.counts(window, policy);
                }
                return counts_tuple(counts);
            },
            py::arg("window") = "5m", py::arg("policy_id") = py::none(),
            "(drift, total) in a window, across all policies or for one.")
        .def(
            "ratio",
            [](const DriftTracker& tracker, const std::string& window,
               std::optional<py::handle> policy_id) {
                const auto policy = policy_arg(policy_id);
                py::gil_scoped_release release;
                return tracker.ratio(window, policy);
            },
            py::arg("window") = "5m", py::arg("policy_id") = py::none(),
            "drift / total in a window; 0.0 when it is empty.")
        .def(
            "ratio_5m", [](const DriftTracker& t) { return t.ratio("5m"); },
            py::call_guard<py::gil_scoped_release>())
        .def(
            "ratio_15m", [](const DriftTracker& t) { return t.ratio("15m"); },
            py::call_guard<py::gil_scoped_release>())
        .def(
            "ratio_60m", [](const DriftTracker& t) { return t.ratio("60m"); },
            py::call_guard<py::gil_scoped_release>())
        .def("policies", &DriftTracker::policies,
             "Policy ids seen, in order of arrival, then '__overflow__' if the cap was hit.")
        .def("reset", &DriftTracker::reset, "Empties every window; policy ids keep their slots.")
        .def_property_readonly("windows", &DriftTracker::windows)
        .def_property_readonly("max_policies",
                               [](const DriftTracker& t) { return t.index()->max_policies(); })
        .def_property_readonly(
            "clock",
            [](const DriftTracker& t) { return std::const_pointer_cast<Clock>(t.clock()); })
        .def_property_readonly("registry", &DriftTracker::registry);
    def_fast<&record_fast>(tracker, "record",
                           "record(policy_id, shadow, enforced) -> bool\n\n"
                           "Records one request; True when it drifted.");
}

}  // namespace driftgate::bindings
