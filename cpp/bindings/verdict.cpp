#include <pybind11/native_enum.h>

#include <array>

#include "bindings.hpp"

namespace driftgate::bindings {

std::optional<Verdict> try_verdict(py::handle value) {
    if (auto verdict = verdict_member(value)) return verdict;
    if (PyUnicode_Check(value.ptr())) {
        Py_ssize_t size = 0;
        const char* text = PyUnicode_AsUTF8AndSize(value.ptr(), &size);
        if (text == nullptr) {
            PyErr_Clear();
            return std::nullopt;
        }
        return parse_verdict(std::string_view(text, static_cast<std::size_t>(size)));
    }
    return std::nullopt;
}

Verdict verdict_arg_other(py::handle value, const char* argument) {
    if (auto verdict = try_verdict(value)) return *verdict;
    throw py::value_error(std::string("invalid verdict for ") + argument + ": " +
                          short_repr(value) +
                          "; expected Verdict.OK, Verdict.WARN, Verdict.FAIL or 'ok', 'warn', "
                          "'fail' (any case)");
}

py::object verdict_object(Verdict verdict) {
    return py::reinterpret_borrow<py::object>(verdict_members[static_cast<std::size_t>(verdict)]);
}

std::string short_repr(py::handle value) {
    std::string text = py::repr(value).cast<std::string>();
    constexpr std::size_t kShown = 80;
    if (text.size() > kShown) text = text.substr(0, kShown) + "...";
    return text;
}

std::string_view text_arg_other(py::handle value, const char* argument, bool allow_bytes) {
    Py_ssize_t size = 0;
    if (PyUnicode_Check(value.ptr())) {
        const char* text = PyUnicode_AsUTF8AndSize(value.ptr(), &size);
        if (text == nullptr) throw py::error_already_set();
        return {text, static_cast<std::size_t>(size)};
    }
    if (allow_bytes && PyBytes_Check(value.ptr())) {
        char* data = nullptr;
        PyBytes_AsStringAndSize(value.ptr(), &data, &size);
        return {data, static_cast<std::size_t>(size)};
    }
    throw py::type_error(std::string(argument) + " must be " +
                         (allow_bytes ? "str or bytes" : "str") + ", got " +
                         Py_TYPE(value.ptr())->tp_name + " " + short_repr(value));
}

std::size_t size_arg(long long value, const char* argument) {
    if (value < 0) {
        throw py::value_error(std::string(argument) + "=" + std::to_string(value) +
                              ": expected a count >= 0");
    }
    return static_cast<std::size_t>(value);
}

void register_verdict(py::module_& m) {
    py::native_enum<Verdict>(m, "Verdict", "enum.Enum",
                             "The outcome of evaluating a policy: OK, WARN or FAIL.")
        .value("OK", Verdict::Ok)
        .value("WARN", Verdict::Warn)
        .value("FAIL", Verdict::Fail)
        .finalize();
    py::object cls = m.attr("Verdict");
    verdict_members = {cls.attr("OK").ptr(), cls.attr("WARN").ptr(), cls.attr("FAIL").ptr()};

    m.def(
        "parse_verdict",
        [](py::handle value) { return verdict_object(verdict_arg(value, "value")); },
        py::arg("value"), "A Verdict from a Verdict or 'ok'/'warn'/'fail' (any case).");
}

}  // namespace driftgate::bindings
