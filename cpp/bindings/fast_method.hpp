#pragma once

// Methods on the per-request path (DriftTracker.record, SignatureLRU.is_new, ...) are installed
// as METH_FASTCALL methods that CPython calls directly. pybind11's dispatcher (overload
// resolution, argument casters, self lookup) costs about 100 ns, more than the work of the
// call itself; a fast method costs what a C builtin costs. Everything else uses pybind11.

#include <pybind11/pybind11.h>

#include <array>
#include <exception>
#include <new>
#include <stdexcept>
#include <string>

namespace driftgate::bindings {

namespace py = pybind11;

/// The positional and keyword arguments of a fast call, matched to `names` by position or
/// keyword; every name is required. TypeError names what is missing, unknown or doubled.
template <std::size_t N>
std::array<PyObject*, N> match_arguments(const char* method,
                                         const std::array<const char*, N>& names,
                                         PyObject* const* args, Py_ssize_t nargs,
                                         PyObject* kwnames) {
    std::array<PyObject*, N> out{};
    if (static_cast<std::size_t>(nargs) > N) {
        throw py::type_error(std::string(method) + "() takes " + std::to_string(N) +
                             " arguments, got " + std::to_string(nargs));
    }
    for (Py_ssize_t i = 0; i < nargs; ++i) out[static_cast<std::size_t>(i)] = args[i];
    if (kwnames != nullptr) {
        const Py_ssize_t nkw = PyTuple_GET_SIZE(kwnames);
        for (Py_ssize_t k = 0; k < nkw; ++k) {
            const char* keyword = PyUnicode_AsUTF8(PyTuple_GET_ITEM(kwnames, k));
            if (keyword == nullptr) throw py::error_already_set();
            std::size_t position = N;
            for (std::size_t i = 0; i < N; ++i) {
                if (std::string_view(keyword) == names[i]) position = i;
            }
            if (position == N) {
                throw py::type_error(std::string(method) +
                                     "() got an unexpected keyword argument '" + keyword + "'");
            }
            if (out[position] != nullptr) {
                throw py::type_error(std::string(method) + "() got multiple values for argument '" +
                                     keyword + "'");
            }
            out[position] = args[nargs + k];
        }
    }
    for (std::size_t i = 0; i < N; ++i) {
        if (out[i] == nullptr) {
            throw py::type_error(std::string(method) + "() missing required argument '" + names[i] +
                                 "'");
        }
    }
    return out;
}

/// Sets the Python error for the exception in flight, as pybind11's translators would.
inline void set_python_error() noexcept {
    try {
        throw;
    } catch (py::error_already_set& error) {
        error.restore();
    } catch (const py::builtin_exception& error) {
        error.set_error();
    } catch (const std::invalid_argument& error) {
        PyErr_SetString(PyExc_ValueError, error.what());
    } catch (const std::out_of_range& error) {
        PyErr_SetString(PyExc_IndexError, error.what());
    } catch (const std::bad_alloc&) {
        PyErr_NoMemory();
    } catch (const std::exception& error) {
        PyErr_SetString(PyExc_RuntimeError, error.what());
    } catch (...) {
        PyErr_SetString(PyExc_RuntimeError, "unknown C++ exception");
    }
}

/// The C++ object behind `self`. For an instance of exactly T's registered type (the common
/// case) the value pointer is read straight from pybind11's instance record: py::cast's lookup
/// goes through the interpreter's internals dict, which costs as much as the call itself.
/// Anything else (subclasses, uninitialised instances) takes py::cast's checked path.
template <typename T>
T& self_as(py::handle self) {
    static PyTypeObject* const exact_type =
        reinterpret_cast<PyTypeObject*>(py::type::of<T>().ptr());
    if (Py_TYPE(self.ptr()) == exact_type) {
        auto* instance = reinterpret_cast<py::detail::instance*>(self.ptr());
        if (instance->simple_layout && instance->simple_value_holder[0] != nullptr) {
            return *static_cast<T*>(instance->simple_value_holder[0]);
        }
    }
    return py::cast<T&>(self);
}

/// The signature of a fast method's body: self and CPython's vectorcall arguments.
using FastBody = py::object (*)(py::handle self, PyObject* const* args, Py_ssize_t nargs,
                                PyObject* kwnames);

template <FastBody Body>
PyObject* fast_call(PyObject* self, PyObject* const* args, Py_ssize_t nargs,
                    PyObject* kwnames) noexcept {
    try {
        return Body(self, args, nargs, kwnames).release().ptr();
    } catch (...) {
        set_python_error();
        return nullptr;
    }
}

/// Installs `Body` on a pybind11 class as the METH_FASTCALL method `name` (a string literal).
template <FastBody Body, typename Class>
void def_fast(Class& cls, const char* name, const char* doc) {
    static PyMethodDef def{
        name, reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&fast_call<Body>)),
        METH_FASTCALL | METH_KEYWORDS, doc};
    PyObject* descriptor = PyDescr_NewMethod(reinterpret_cast<PyTypeObject*>(cls.ptr()), &def);
    if (descriptor == nullptr) throw py::error_already_set();
    cls.attr(name) = py::reinterpret_steal<py::object>(descriptor);
}

}  // namespace driftgate::bindings
