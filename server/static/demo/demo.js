// The aiotusd demo page: the Uppy Dashboard with the tus plugin, pointed at this server.
"use strict";
(function () {
  var endpoint = document.body.dataset.endpoint;
  document.getElementById("endpoint").textContent = endpoint;
  var uploads = document.getElementById("uploads");
  var status = document.getElementById("status");

  var uppy = new Uppy.Uppy({ autoProceed: false })
    .use(Uppy.Dashboard, {
      inline: true,
      target: "#dashboard",
      height: 380,
      width: "100%",
      showProgressDetails: true,
      proudlyDisplayPoweredByUppy: false,
    })
    .use(Uppy.Tus, {
      endpoint: endpoint,
      retryDelays: [0, 1000, 3000, 5000],
      removeFingerprintOnSuccess: true,
    });

  uppy.on("upload-success", function (file, response) {
    var item = document.createElement("li");
    var link = document.createElement("a");
    link.href = response.uploadURL;
    link.textContent = file.name;
    link.target = "_blank";
    link.rel = "noopener";
    item.appendChild(link);
    item.appendChild(document.createTextNode(" (" + file.size + " bytes)"));
    uploads.appendChild(item);
  });
  uppy.on("upload-error", function (file, error) {
    status.textContent = (file ? file.name + ": " : "") + error.message;
  });
  uppy.on("upload", function () {
    status.textContent = "";
  });
  window.aiotusdDemo = uppy;
})();
