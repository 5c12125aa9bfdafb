#pragma once

// Shared glue for the binding files: one register_<area> per file, and the conversions of
// Python arguments that several areas accept.

#include <pybind11/pybind11.h>

#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "driftgate/clock.hpp"
#include "driftgate/metrics_registry.hpp"
#include "driftgate/verdict.hpp"

namespace driftgate::bindings {

namespace py = pybind11;

void register_clock(py::module_& m);
void register_verdict(py::module_& m);
void register_metrics(py::module_& m);
void register_tracker(py::module_& m);
void register_enforcer(py::module_& m);
void register_signatures(py::module_& m);
void register_rollout(py::module_& m);
void register_gate(py::module_& m);
void register_bench(py::module_& m);

/// A Verdict member or "ok"/"warn"/"fail" in any case; nullopt for anything else.
std::optional<Verdict> try_verdict(py::handle value);
/// Like try_verdict, or ValueError naming the value and the argument.
Verdict verdict_arg(py::handle value, const char* argument);
/// The Python Verdict member of a verdict.
py::object verdict_object(Verdict verdict);

/// A view of a str (UTF-8) or bytes argument, valid while the argument lives; TypeError for
/// other types. `allow_bytes` false accepts only str.
std::string_view text_arg(py::handle value, const char* argument, bool allow_bytes = true);

/// A count argument as size_t, or ValueError naming it when negative.
std::size_t size_arg(long long value, const char* argument);

/// repr(value), cut short, for error messages.
std::string short_repr(py::handle value);

inline std::shared_ptr<MetricsRegistry> registry_or_default(std::shared_ptr<MetricsRegistry> r) {
    return r ? std::move(r) : MetricsRegistry::default_registry();
}

}  // namespace driftgate::bindings
