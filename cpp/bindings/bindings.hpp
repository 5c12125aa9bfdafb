#pragma once

// Shared glue for the binding files: one register_<area> per file, and the conversions of
// Python arguments that several areas accept.

#include <pybind11/pybind11.h>

#include <array>
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

/// The three Verdict members, borrowed from the enum class, which the module keeps alive; set
/// by register_verdict.
inline std::array<PyObject*, 3> verdict_members{};

/// The Verdict a member is, by identity: the hot path of every record() and decide().
inline std::optional<Verdict> verdict_member(py::handle value) noexcept {
    for (std::size_t code = 0; code < verdict_members.size(); ++code) {
        if (value.ptr() == verdict_members[code]) return static_cast<Verdict>(code);
    }
    return std::nullopt;
}

/// A Verdict member or "ok"/"warn"/"fail" in any case; nullopt for anything else.
std::optional<Verdict> try_verdict(py::handle value);
/// verdict_arg for what is not a Verdict member.
Verdict verdict_arg_other(py::handle value, const char* argument);
/// Like try_verdict, or ValueError naming the value and the argument.
inline Verdict verdict_arg(py::handle value, const char* argument) {
    if (auto verdict = verdict_member(value)) return *verdict;
    return verdict_arg_other(value, argument);
}
/// The Python Verdict member of a verdict.
py::object verdict_object(Verdict verdict);

/// text_arg for what is not an ASCII str.
std::string_view text_arg_other(py::handle value, const char* argument, bool allow_bytes);

/// A view of a str (UTF-8) or bytes argument, valid while the argument lives; TypeError for
/// other types. `allow_bytes` false accepts only str.
inline std::string_view text_arg(py::handle value, const char* argument, bool allow_bytes = true) {
    // Inline for the common case, an ASCII str (policy ids always are), whose characters are
    // its UTF-8 bytes: no call into the interpreter.
    PyObject* object = value.ptr();
    if (PyUnicode_Check(object) && PyUnicode_IS_COMPACT_ASCII(object)) {
        return {static_cast<const char*>(PyUnicode_DATA(object)),
                static_cast<std::size_t>(PyUnicode_GET_LENGTH(object))};
    }
    return text_arg_other(value, argument, allow_bytes);
}

/// A count argument as size_t, or ValueError naming it when negative.
std::size_t size_arg(long long value, const char* argument);

/// repr(value), cut short, for error messages.
std::string short_repr(py::handle value);

inline std::shared_ptr<MetricsRegistry> registry_or_default(std::shared_ptr<MetricsRegistry> r) {
    return r ? std::move(r) : MetricsRegistry::default_registry();
}

}  // namespace driftgate::bindings
