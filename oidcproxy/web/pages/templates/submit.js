// Posts the sign-out form of the page by itself (logout_confirm = false).
document.addEventListener("DOMContentLoaded", function () {
  var form = document.getElementById("logout-form");
  if (form) { form.submit(); }
});
