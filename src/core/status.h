// Errors as values. Library code returns Status / Expected<T>; it never exits.
// Messages name the file, tensor or field at fault, in one line.
#pragma once
#include <string>
#include <utility>
#include <variant>

namespace moex {

enum class StatusCode { kOk = 0, kInvalidArgument, kNotFound, kIoError, kCorrupt, kUnsupported, kOutOfMemory, kInternal };

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}
  static Status ok() { return {}; }
  bool is_ok() const { return code_ == StatusCode::kOk; }
  explicit operator bool() const { return is_ok(); }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status invalid_argument(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
inline Status not_found(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
inline Status io_error(std::string m) { return {StatusCode::kIoError, std::move(m)}; }
inline Status corrupt(std::string m) { return {StatusCode::kCorrupt, std::move(m)}; }
inline Status unsupported(std::string m) { return {StatusCode::kUnsupported, std::move(m)}; }
inline Status internal_error(std::string m) { return {StatusCode::kInternal, std::move(m)}; }

// A value or the Status that explains why there is none.
template <class T>
class [[nodiscard]] Expected {
 public:
  Expected(T value) : v_(std::move(value)) {}             // NOLINT(implicit)
  Expected(Status status) : v_(std::move(status)) {}      // NOLINT(implicit); must not be ok
  bool has_value() const { return std::holds_alternative<T>(v_); }
  explicit operator bool() const { return has_value(); }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  const Status& status() const {
    static const Status kOk;
    return has_value() ? kOk : std::get<Status>(v_);
  }

 private:
  std::variant<T, Status> v_;
};

}  // namespace moex

#define MOEX_CONCAT_INNER(a, b) a##b
#define MOEX_CONCAT(a, b) MOEX_CONCAT_INNER(a, b)

// Return the Status from the enclosing function if `expr` failed.
#define MOEX_RETURN_IF_ERROR(expr)                 \
  do {                                             \
    ::moex::Status moex_status_ = (expr);          \
    if (!moex_status_.is_ok()) return moex_status_; \
  } while (0)

// `MOEX_ASSIGN_OR_RETURN(auto x, make_x())`: unwrap an Expected or return its Status.
#define MOEX_ASSIGN_OR_RETURN(lhs, expr) MOEX_ASSIGN_OR_RETURN_IMPL(MOEX_CONCAT(moex_expected_, __LINE__), lhs, expr)
#define MOEX_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.has_value()) return tmp.status();       \
  lhs = std::move(tmp).value()
